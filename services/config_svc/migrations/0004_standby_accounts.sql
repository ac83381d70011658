-- Contract §6: the accounts that send an account's waiting jobs while it is paused for a
-- reason that is not the recipients' (ordered), and the From addresses or @domains a standby
-- may send as besides its own.
ALTER TABLE accounts
    ADD COLUMN standby_account_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN allowed_from text[] NOT NULL DEFAULT '{}';
