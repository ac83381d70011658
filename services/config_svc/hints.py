"""Which setting is likely wrong, from a failed test mail's stage and the server's answer.

The seed's example: a 535 at login earns "a setting is wrong; here the user name or the
password". Each hint names the form's fields by their API names (smtp_host, smtp_port, tls,
...) and says what to change. `diagnose` picks the case; `hint` words it in English or Japanese.
"""

from typing import Literal

from shared.smtp import SmtpEndpoint

Lang = Literal["en", "ja"]

_HINTS: dict[str, dict[Lang, str]] = {
    "pop_login": {
        "en": "The POP server refused the login: check pop_username and pop_password.",
        "ja": "POPサーバーがログインを拒否しました。POPユーザー(pop_username)と"
              "POPパスワード(pop_password)を確認してください。",
    },
    "pop_stls": {
        "en": "The POP server does not offer STLS (STARTTLS on POP): check pop_port "
              "(POP3 over TLS is usually port 995, with tls set to ssl) and tls.",
        "ja": "POPサーバーがSTLS(POPのSTARTTLS)に対応していません。POPポート(pop_port)と"
              "TLS設定(tls)を確認してください(TLSのPOP3は通常995番で、tlsはssl)。",
    },
    "pop_certificate": {
        "en": "The POP server's certificate is not valid for {pop_host}: pop_host must be "
              "the name written in the server's certificate.",
        "ja": "POPサーバーの証明書が {pop_host} に対して有効ではありません。POPホスト(pop_host)"
              "にはサーバー証明書に記載された名前を指定してください。",
    },
    "pop_unreachable": {
        "en": "Could not talk to the POP server {pop_host}:{pop_port}: check pop_host and "
              "pop_port (110, or 995 with tls set to ssl).",
        "ja": "POPサーバー {pop_host}:{pop_port} と通信できませんでした。POPホスト(pop_host)と"
              "POPポート(pop_port)を確認してください(110番、またはtlsがsslなら995番)。",
    },
    "unknown_host": {
        "en": "The name {host} was not found in DNS: check smtp_host for typos.",
        "ja": "ホスト名 {host} が見つかりません(DNS)。SMTPホスト(smtp_host)のつづりを"
              "確認してください。",
    },
    "refused": {
        "en": "Nothing accepts connections on {host}:{port}: check smtp_port (usually 587 "
              "for starttls, 465 for ssl, 25 without TLS) and smtp_host.",
        "ja": "{host}:{port} は接続を受け付けていません。SMTPポート(smtp_port)を確認して"
              "ください(通常、starttlsは587番、sslは465番、TLSなしは25番)。"
              "SMTPホスト(smtp_host)も確認してください。",
    },
    "timeout": {
        "en": "No answer from {host}:{port} in time: check smtp_host and smtp_port, and that "
              "a firewall lets outgoing connections to port {port} through. A server that "
              "expects TLS from the first byte also stays silent: then set tls to ssl.",
        "ja": "{host}:{port} から時間内に応答がありません。SMTPホスト(smtp_host)と"
              "SMTPポート(smtp_port)、およびファイアウォールがポート{port}への接続を許可して"
              "いるかを確認してください。接続直後からTLSを使うサーバーも応答しないため、"
              "その場合はTLS設定(tls)をsslにしてください。",
    },
    "timeout_ssl": {
        "en": "No answer from {host}:{port} in time: check smtp_host and smtp_port, and that "
              "a firewall lets outgoing connections to port {port} through.",
        "ja": "{host}:{port} から時間内に応答がありません。SMTPホスト(smtp_host)と"
              "SMTPポート(smtp_port)、およびファイアウォールがポート{port}への接続を許可して"
              "いるかを確認してください。",
    },
    "implicit_tls_port": {
        "en": "Port {port} usually expects TLS from the first byte (implicit TLS): set tls "
              "to ssl, or set smtp_port to 587 and keep starttls.",
        "ja": "ポート{port}は通常、接続直後からTLSを使います(暗黙のTLS)。TLS設定(tls)を"
              "sslにするか、SMTPポート(smtp_port)を587にしてstarttlsを使ってください。",
    },
    "connect_other": {
        "en": "The server at {host}:{port} did not accept the connection: check smtp_host "
              "and smtp_port.",
        "ja": "{host}:{port} のサーバーが接続を受け付けませんでした。SMTPホスト(smtp_host)と"
              "SMTPポート(smtp_port)を確認してください。",
    },
    "starttls_not_offered": {
        "en": "The server on port {port} does not offer STARTTLS, so the password was not "
              "sent. If it expects TLS from the first byte (usually port 465), set tls to "
              "ssl; otherwise check smtp_port (STARTTLS is usually on port 587).",
        "ja": "ポート{port}のサーバーがSTARTTLSに対応していないため、パスワードは送信して"
              "いません。接続直後からTLSを使うサーバー(通常465番)ならTLS設定(tls)をsslに、"
              "そうでなければSMTPポート(smtp_port)を確認してください(STARTTLSは通常587番)。",
    },
    "certificate": {
        "en": "The server's certificate is not valid for {host}: smtp_host must be the name "
              "written in the server's certificate (not an IP address or another alias), "
              "and the certificate must come from a trusted authority.",
        "ja": "サーバー証明書が {host} に対して有効ではありません。SMTPホスト(smtp_host)には"
              "サーバー証明書に記載された名前(IPアドレスや別名ではなく)を指定してください。"
              "証明書は信頼された認証局が発行したものである必要があります。",
    },
    "plain_port_with_ssl": {
        "en": "Port {port} does not speak TLS from the first byte: set tls to starttls "
              "(usual on port 587), or set smtp_port to the server's implicit-TLS port "
              "(usually 465).",
        "ja": "ポート{port}は接続直後からのTLSに対応していません。TLS設定(tls)をstarttlsに"
              "する(587番で一般的)か、SMTPポート(smtp_port)を暗黙のTLSのポート"
              "(通常465番)にしてください。",
    },
    "tls_failed": {
        "en": "The TLS negotiation with {host}:{port} failed: check tls and smtp_port.",
        "ja": "{host}:{port} とのTLSネゴシエーションに失敗しました。TLS設定(tls)と"
              "SMTPポート(smtp_port)を確認してください。",
    },
    "tls_required": {
        "en": "The server requires TLS: set tls to starttls (usually port 587) or ssl "
              "(usually port 465).",
        "ja": "サーバーはTLSを必須としています。TLS設定(tls)をstarttls(通常587番)または"
              "ssl(通常465番)にしてください。",
    },
    "ehlo_refused": {
        "en": "The server refused the EHLO greeting: check local_hostname (a fully qualified "
              "name such as mail.example.com) or leave it empty.",
        "ja": "サーバーがEHLOを拒否しました。ローカルホスト名(local_hostname)を確認する"
              "(mail.example.com のような完全なドメイン名)か、空にしてください。",
    },
    "login_refused": {
        "en": "The server refused the login: check smtp_username and smtp_password (some "
              "providers require an app password).",
        "ja": "サーバーがログインを拒否しました。SMTPユーザー(smtp_username)と"
              "SMTPパスワード(smtp_password)を確認してください(アプリパスワードが必要な"
              "プロバイダーもあります)。",
    },
    "login_temporary": {
        "en": "The server could not check the login just now (a temporary failure): try "
              "again later; if it persists, check smtp_username and smtp_password.",
        "ja": "サーバーが一時的にログインを確認できませんでした。しばらくしてから再度お試し"
              "ください。続く場合はSMTPユーザー(smtp_username)とSMTPパスワード"
              "(smtp_password)を確認してください。",
    },
    "auth_not_offered_plain": {
        "en": "The server offers no login (AUTH) on an unencrypted connection; many servers "
              "offer it only over TLS: set tls to starttls or ssl. If the server needs no "
              "login, turn smtp_auth off.",
        "ja": "暗号化されていない接続では、サーバーがログイン(AUTH)を提供していません。"
              "多くのサーバーはTLS接続でのみ提供します。TLS設定(tls)をstarttlsまたはsslに"
              "してください。ログインが不要なサーバーなら、SMTP認証(smtp_auth)をオフに"
              "してください。",
    },
    "auth_not_offered": {
        "en": "The server offers no login (AUTH): if it needs none, turn smtp_auth off; "
              "otherwise check smtp_host and smtp_port (mail submission is usually on 587 or "
              "465).",
        "ja": "サーバーがログイン(AUTH)を提供していません。ログインが不要ならSMTP認証"
              "(smtp_auth)をオフにしてください。そうでなければSMTPホスト(smtp_host)と"
              "SMTPポート(smtp_port)を確認してください(送信用は通常587番か465番)。",
    },
    "auth_mechanism": {
        "en": "The server offers no login method this service supports (PLAIN, LOGIN, "
              "CRAM-MD5): check smtp_host and smtp_port, or ask the mail provider.",
        "ja": "サーバーが、このサービスの対応するログイン方式(PLAIN、LOGIN、CRAM-MD5)を"
              "提供していません。SMTPホスト(smtp_host)とSMTPポート(smtp_port)を確認するか、"
              "メールのプロバイダーにお問い合わせください。",
    },
    "auth_required": {
        "en": "The server requires a login: turn smtp_auth on and set smtp_username and "
              "smtp_password.",
        "ja": "サーバーはログインを必須としています。SMTP認証(smtp_auth)をオンにし、"
              "SMTPユーザー(smtp_username)とSMTPパスワード(smtp_password)を設定して"
              "ください。",
    },
    "smtputf8": {
        "en": "The server cannot take addresses with non-ASCII characters (it offers no "
              "SMTPUTF8): use ASCII addresses for from_address and the recipient.",
        "ja": "サーバーが非ASCII文字を含むアドレスに対応していません(SMTPUTF8なし)。"
              "送信元アドレス(from_address)と宛先にはASCIIのアドレスを使ってください。",
    },
    "sender_refused": {
        "en": "The server refused the sender address: check from_address; this account may "
              "not be allowed to send as that address.",
        "ja": "サーバーが送信元アドレスを拒否しました。送信元アドレス(from_address)を確認"
              "してください。このアカウントでは、そのアドレスを送信元にできない可能性が"
              "あります。",
    },
    "relay_denied": {
        "en": "The server does not relay mail for this connection: turn smtp_auth on with "
              "smtp_username and smtp_password (or POP before SMTP, if the provider uses it).",
        "ja": "サーバーがこの接続からのメールを中継しません。SMTP認証(smtp_auth)をオンにして"
              "SMTPユーザー(smtp_username)とSMTPパスワード(smtp_password)を設定して"
              "ください(プロバイダーが使う場合はPOP before SMTP)。",
    },
    "recipient_refused": {
        "en": "The server refused the recipient: check the `to` address.",
        "ja": "サーバーが宛先を拒否しました。宛先アドレス(to)を確認してください。",
    },
    "temporary": {
        "en": "The server answered with a temporary failure: try again in a few minutes.",
        "ja": "サーバーが一時的なエラーを返しました。数分後に再度お試しください。",
    },
    "data_refused": {
        "en": "The server refused the message itself (see its answer); the account's "
              "settings are likely right.",
        "ja": "サーバーがメールの内容を拒否しました(サーバーの応答を参照してください)。"
              "アカウントの設定はおそらく正しいです。",
    },
    "connection_lost": {
        "en": "The connection broke while sending: try again; if it keeps happening, check "
              "the network and firewalls between this service and {host}.",
        "ja": "送信中に接続が切れました。再度お試しください。繰り返す場合は、このサービスと"
              "{host} の間のネットワークとファイアウォールを確認してください。",
    },
    "local_hostname": {
        "en": "local_hostname is not a valid host name: use a name such as mail.example.com "
              "(ASCII, no spaces) or leave it empty.",
        "ja": "ローカルホスト名(local_hostname)がホスト名として正しくありません。"
              "mail.example.com のような名前(ASCII、空白なし)にするか、空にしてください。",
    },
    "unknown": {
        "en": "Check smtp_host, smtp_port and tls, and the server's answer above.",
        "ja": "SMTPホスト(smtp_host)、SMTPポート(smtp_port)、TLS設定(tls)と、"
              "上記のサーバーの応答を確認してください。",
    },
}

_IMPLICIT_TLS_PORTS = {465}


def hint(stage: str, code: int | None, text: str, exception: str, endpoint: SmtpEndpoint,
         lang: Lang) -> str:
    """One or two sentences naming the setting most likely wrong, in `lang`."""
    wording = _HINTS[diagnose(stage, code, text, exception, endpoint)]
    pop = endpoint.pop
    return wording["ja" if lang == "ja" else "en"].format(
        host=endpoint.host, port=endpoint.port,
        pop_host=pop.host if pop else "", pop_port=pop.port if pop else "",
    )


def diagnose(stage: str, code: int | None, text: str, exception: str,
             endpoint: SmtpEndpoint) -> str:
    """The key of the hint for this failure."""
    lowered = text.lower()
    timed_out = exception == "TimeoutError"
    if stage == "pop":
        return _pop(lowered, exception)
    if _tls_required(code, lowered) and endpoint.tls == "none":
        return "tls_required"  # e.g. 530 Must issue a STARTTLS command first
    if "local_hostname" in lowered or (stage == "ehlo" and exception == "UnicodeEncodeError"):
        return "local_hostname"
    if stage == "resolve":
        return "unknown_host"
    if stage == "connect":
        if timed_out:
            if endpoint.tls == "ssl":
                return "timeout_ssl"
            implicit = endpoint.port in _IMPLICIT_TLS_PORTS
            return "implicit_tls_port" if implicit else "timeout"
        if exception == "ConnectionRefusedError" or "refused" in lowered:
            return "refused"
        return "connect_other"
    if stage == "tls":
        if "did not offer starttls" in lowered:
            return "starttls_not_offered"
        if _certificate(lowered, exception):
            return "certificate"
        if endpoint.tls == "ssl":
            return "plain_port_with_ssl"  # e.g. [SSL: WRONG_VERSION_NUMBER] on port 587
        return "tls_failed"
    if stage == "ehlo":
        return "ehlo_refused"
    if stage == "auth":
        return _auth(code, lowered, endpoint)
    if code is None and (timed_out or "connection" in lowered or "eof" in lowered):
        return "connection_lost"
    if stage == "mail":
        return _mail(code, lowered)
    if stage == "rcpt":
        if "relay" in lowered:
            return "relay_denied"
        return "temporary" if _temporary(code) else "recipient_refused"
    if stage == "data":
        return "temporary" if _temporary(code) else "data_refused"
    return "unknown"


def _pop(lowered: str, exception: str) -> str:
    if "stls" in lowered:
        return "pop_stls"
    if exception == "error_proto" and lowered.startswith("-err"):
        return "pop_login"  # anything else (e.g. "220 ..."): not a POP server on that port
    if _certificate(lowered, exception):
        return "pop_certificate"
    return "pop_unreachable"


def _auth(code: int | None, lowered: str, endpoint: SmtpEndpoint) -> str:
    if "offered no auth" in lowered:
        return "auth_not_offered_plain" if endpoint.tls == "none" else "auth_not_offered"
    if "none of cram-md5" in lowered:
        return "auth_mechanism"
    if _temporary(code):
        return "login_temporary"
    return "login_refused"


def _mail(code: int | None, lowered: str) -> str:
    if "smtputf8" in lowered:
        return "smtputf8"
    if code == 530 or "authentication required" in lowered:
        return "auth_required"
    return "temporary" if _temporary(code) else "sender_refused"


def _tls_required(code: int | None, lowered: str) -> bool:
    # 530 "Must issue a STARTTLS command first"; 538 "Encryption required for requested
    # authentication mechanism"; some servers say "TLS required" with other codes.
    if code not in (530, 538, 550, 554):
        return False
    return "starttls" in lowered or "encryption required" in lowered or "tls required" in lowered


def _certificate(lowered: str, exception: str) -> bool:
    return exception in ("SSLCertVerificationError", "CertificateError") or "certificate" in lowered


def _temporary(code: int | None) -> bool:
    return code is not None and 400 <= code <= 499
