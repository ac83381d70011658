-- A pause for a provider's quota ends by itself: when the quota is likely back.
ALTER TABLE account_runtime ADD COLUMN resumes_at timestamptz;
