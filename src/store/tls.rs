//! TLS to the result store, with libpq's `sslmode` values, over rustls (ring).
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and no `sslrootcert`: this module
//! takes both out of the connection string, merges them with the flags
//! (`--database-sslmode`, `--database-ca-file`), and builds the connector. What each mode does
//! (libpq's semantics, <https://www.postgresql.org/docs/current/libpq-ssl.html>):
//!
//! ```text
//!  sslmode      TLS                        the server's certificate
//!  disable      never                      -
//!  prefer       if the server offers it    chain checked when a CA is given, else not checked
//!  require      always                     chain checked when a CA is given, else not checked
//!  verify-ca    always                     chain checked against the CA (a CA is required)
//!  verify-full  always                     chain checked, and the host name (a CA is required)
//! ```
//!
//! Without `sslmode` the mode is `prefer`, as in libpq. `prefer` falls back to plain TCP only
//! when the server answers that it has no TLS; a failed handshake is an error.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use percent_encoding::percent_decode_str;
use rustls::{
    CertificateError as C, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor, verify_server_name,
    },
    crypto::{WebPkiSupportedAlgorithms, ring, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::ParsedCertificate,
};
use thiserror::Error;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where the settings can be given, for messages.
const MODE_SETTINGS: &str =
    "sslmode in the connection string (--database-url) or --database-sslmode";
const CA_SETTINGS: &str = "sslrootcert in the connection string or --database-ca-file \
     (CRAWLER_DATABASE_CA_FILE; in the chart worker.postgres.tls.caSecretName)";

/// libpq's `sslmode`, all five values that matter here (`allow` is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate must chain to a CA (the modes that need one).
    fn needs_ca(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What tokio-postgres does on the wire: whether it asks for TLS and insists on it.
    fn wire(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "sslmode {s:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )
            })
    }
}

/// The TLS settings given outside the connection string (flags, environment). Each may also be
/// in the connection string; given in both places they must agree.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// `--database-sslmode`.
    pub sslmode: Option<SslMode>,
    /// `--database-ca-file`: the CA certificate(s), PEM.
    pub ca_file: Option<PathBuf>,
}

/// A TLS setting that cannot work, found before connecting.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{why} ({MODE_SETTINGS})")]
    BadMode { why: String },
    #[error(
        "the connection string says {setting}={in_url} but {flag} says {in_flag}: give it in one \
         place"
    )]
    Conflict {
        setting: &'static str,
        flag: &'static str,
        in_url: String,
        in_flag: String,
    },
    #[error(
        "sslmode={mode} checks the database server's certificate against a CA, and none is \
         given: set {CA_SETTINGS} to the CA's certificate (PEM), or use sslmode=require to \
         encrypt without checking the certificate"
    )]
    NoCa { mode: SslMode },
    #[error("cannot read the database CA file {} ({CA_SETTINGS})", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database CA file {} ({CA_SETTINGS}) {why}: it must hold the CA's certificate(s) in \
         PEM (-----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    BadCa { path: PathBuf, why: String },
}

/// The TLS settings in effect and the connector built from them.
#[derive(Clone)]
pub struct Tls {
    pub mode: SslMode,
    /// The CA the server's certificate is checked against; `None`: not checked.
    pub ca_file: Option<PathBuf>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Takes `sslmode` and `sslrootcert` out of `conn` and merges them with `options`. Returns
    /// the settings and the connection string tokio-postgres is to parse (the rest of `conn`).
    pub fn from_connection_string(
        conn: &str,
        options: &TlsOptions,
    ) -> Result<(Tls, String), TlsError> {
        let split = split(conn);
        let in_url = split
            .sslmode
            .as_deref()
            .map(str::parse::<SslMode>)
            .transpose()
            .map_err(|why| TlsError::BadMode { why })?;
        let mode = agree(
            ("sslmode", "--database-sslmode"),
            in_url,
            options.sslmode,
            SslMode::to_string,
        )?
        .unwrap_or(SslMode::Prefer);
        let ca_file = agree(
            ("sslrootcert", "--database-ca-file"),
            split.sslrootcert.map(PathBuf::from),
            options.ca_file.clone(),
            |p| p.display().to_string(),
        )?;
        if mode.needs_ca() && ca_file.is_none() {
            return Err(TlsError::NoCa { mode });
        }
        // libpq reads no CA with sslmode=disable; neither do we (nothing would use it).
        let ca_file = ca_file.filter(|_| mode != SslMode::Disable);
        let roots = ca_file.as_deref().map(read_roots).transpose()?;
        let verifier = Verifier {
            roots: roots.map(Arc::new),
            check_name: mode == SslMode::VerifyFull,
            algorithms: ring::default_provider().signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let tls = Tls {
            mode,
            ca_file,
            connector: MakeRustlsConnect::new(config),
        };
        Ok((tls, split.rest))
    }

    /// Sets what tokio-postgres must do on the wire for this mode.
    pub fn configure(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.mode.wire());
    }

    /// The connector to hand to `tokio_postgres::Config::connect`.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// What to do about a connection that failed because of TLS; `None` when TLS is not why.
    pub fn hint(&self, e: &tokio_postgres::Error) -> Option<String> {
        let mode = self.mode;
        let ca = self
            .ca_file
            .as_deref()
            .map_or_else(String::new, |p| format!(" in {}", p.display()));
        if e.to_string().contains("TLS") && source_text(e).contains("server does not support TLS") {
            return Some(format!(
                "the database server does not accept TLS connections and sslmode={mode} \
                 requires TLS: turn TLS on in the server (ssl = on), or, if an unencrypted \
                 connection is acceptable, set sslmode=prefer or disable ({MODE_SETTINGS})"
            ));
        }
        let rustls::Error::InvalidCertificate(cert) = rustls_error(e)? else {
            return None;
        };
        Some(match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the database server's certificate does not name the host connected to, which \
                 sslmode=verify-full requires: connect by a name the certificate lists (host in \
                 the connection string; hostaddr may give the address), or use \
                 sslmode=verify-ca to check the CA only ({MODE_SETTINGS})"
            ),
            C::UnknownIssuer | C::BadSignature => format!(
                "the database server's certificate is not issued by the CA{ca} \
                 (sslmode={mode}; {CA_SETTINGS}): give the CA that issued the server's \
                 certificate (for a managed database, its provider's CA bundle), or use \
                 sslmode=require without a CA to encrypt without checking the certificate"
            ),
            other => format!(
                "the database server's certificate was refused ({other:?}; sslmode={mode}, CA{ca}): \
                 renew or fix the server's certificate, or use sslmode=require without a CA to \
                 encrypt without checking it"
            ),
        })
    }
}

/// One setting from the connection string and from its flag: either, or both when equal.
fn agree<T: PartialEq>(
    (setting, flag): (&'static str, &'static str),
    in_url: Option<T>,
    in_flag: Option<T>,
    show: impl Fn(&T) -> String,
) -> Result<Option<T>, TlsError> {
    match (in_url, in_flag) {
        (Some(a), Some(b)) if a != b => Err(TlsError::Conflict {
            setting,
            flag,
            in_url: show(&a),
            in_flag: show(&b),
        }),
        (a, b) => Ok(a.or(b)),
    }
}

/// The rustls error under a tokio-postgres error, if TLS failed (tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it: look inside with `get_ref`).
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = err.source();
    }
    None
}

fn source_text(e: &tokio_postgres::Error) -> String {
    std::error::Error::source(e).map_or_else(String::new, ToString::to_string)
}

/// The CA certificates of a PEM file, as rustls's trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let bad = |why: String| TlsError::BadCa {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("holds a certificate that cannot be a CA ({e})")))?;
    }
    Ok(roots)
}

/// Checks the server's certificate as the mode says: not at all (`roots` is `None`), its chain
/// to `roots`, and with `check_name` also the host name. The handshake's signatures are checked
/// in every case (that is what makes the connection encrypted to the holder of the key).
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection string without its TLS settings, and those settings (raw, last one wins).
#[derive(Debug, PartialEq, Eq)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, URL
/// (`postgres://...?sslmode=verify-full&sslrootcert=/ca.pem`) or key-value
/// (`host=db sslmode=verify-full`). Everything else is left as written. A string that does not
/// parse is returned whole, for tokio-postgres to report.
fn split(conn: &str) -> Split {
    let whole = || Split {
        rest: conn.to_owned(),
        sslmode: None,
        sslrootcert: None,
    };
    let url_body = ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|p| conn.strip_prefix(p));
    match url_body {
        Some(body) => split_url(conn, body).unwrap_or_else(whole),
        None => split_key_values(conn).unwrap_or_else(whole),
    }
}

/// The URL form. As tokio-postgres reads it: the credentials end at the first `@` (a password
/// may hold `?`), the query starts at the first `?` after them.
fn split_url(conn: &str, body: &str) -> Option<Split> {
    let after_credentials = body.find('@').map_or(0, |i| i + 1);
    let query_at = body[after_credentials..].find('?')? + after_credentials;
    let head = &conn[..conn.len() - body.len() + query_at];
    let query = &body[query_at + 1..];
    let (mut sslmode, mut sslrootcert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        match decode(key).as_str() {
            "sslmode" => sslmode = Some(decode(value)),
            "sslrootcert" => sslrootcert = Some(decode(value)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Some(Split {
        rest,
        sslmode,
        sslrootcert,
    })
}

/// The key-value form, with tokio-postgres's (and libpq's) rules: `key = value`, the value
/// bare or in single quotes, a backslash escaping the next character. `None` when it does not
/// parse.
fn split_key_values(conn: &str) -> Option<Split> {
    let mut it = conn.char_indices().peekable();
    let (mut sslmode, mut sslrootcert, mut kept) = (None, None, Vec::new());
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        skip_ws(&mut it);
        it.next_if(|&(_, c)| c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        loop {
            match it.peek() {
                None if quoted => return None,
                None => break,
                Some(&(_, '\'')) if quoted => {
                    it.next();
                    break;
                }
                Some(&(_, c)) if c.is_whitespace() && !quoted => break,
                Some(_) => {
                    let (_, c) = it.next()?;
                    if c == '\\' {
                        if let Some((_, escaped)) = it.next() {
                            value.push(escaped);
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
        }
        let end = it.peek().map_or(conn.len(), |&(i, _)| i);
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            _ => kept.push(&conn[start..end]),
        }
    }
    Some(Split {
        rest: kept.join(" "),
        sslmode,
        sslrootcert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_of(conn: &str) -> (String, Option<String>, Option<String>) {
        let s = split(conn);
        (s.rest, s.sslmode, s.sslrootcert)
    }

    fn expected(
        (rest, mode, ca): (&str, Option<&str>, Option<&str>),
    ) -> (String, Option<String>, Option<String>) {
        (
            rest.to_owned(),
            mode.map(str::to_owned),
            ca.map(str::to_owned),
        )
    }

    #[test]
    fn tls_settings_come_out_of_a_url_and_the_rest_stays_as_written() {
        let cases = [
            (
                "postgres://u:p@db:5432/crawler?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                (
                    "postgres://u:p@db:5432/crawler",
                    Some("verify-full"),
                    Some("/etc/ca.pem"),
                ),
            ),
            (
                "postgresql://db/c?application_name=x&sslmode=require&connect_timeout=3",
                (
                    "postgresql://db/c?application_name=x&connect_timeout=3",
                    Some("require"),
                    None,
                ),
            ),
            // Percent-encoded values are decoded; a later value wins, as in tokio-postgres.
            (
                "postgres://db/c?sslrootcert=%2Fca%20dir%2Fca.pem&sslmode=prefer&sslmode=disable",
                ("postgres://db/c", Some("disable"), Some("/ca dir/ca.pem")),
            ),
            // A `?` in the password is not the query.
            (
                "postgres://u:pa?ss@db/c?sslmode=require",
                ("postgres://u:pa?ss@db/c", Some("require"), None),
            ),
            (
                "postgres://u:pa?ss@db/c",
                ("postgres://u:pa?ss@db/c", None, None),
            ),
            ("postgres://db", ("postgres://db", None, None)),
        ];
        for (conn, want) in cases {
            assert_eq!(split_of(conn), expected(want), "{conn}");
        }
    }

    #[test]
    fn tls_settings_come_out_of_key_values_and_the_rest_stays_as_written() {
        let cases = [
            (
                "host=db user=u sslmode=verify-ca sslrootcert='/a b/ca.pem' dbname=c",
                (
                    "host=db user=u dbname=c",
                    Some("verify-ca"),
                    Some("/a b/ca.pem"),
                ),
            ),
            (
                "host = db  password='it\\'s' sslmode = require",
                ("host = db password='it\\'s'", Some("require"), None),
            ),
            ("host=db", ("host=db", None, None)),
            // Does not parse: left whole for tokio-postgres's own message.
            (
                "host=db sslmode='require",
                ("host=db sslmode='require", None, None),
            ),
            ("host", ("host", None, None)),
        ];
        for (conn, want) in cases {
            assert_eq!(split_of(conn), expected(want), "{conn}");
        }
    }

    #[test]
    fn what_is_left_parses_to_the_same_settings_as_before() {
        for conn in [
            "postgres://u:p%40ss@db:6543/crawler?application_name=app&sslmode=require",
            "host=db port=6543 user=u password='p ss' dbname=crawler sslmode=require",
        ] {
            let before: tokio_postgres::Config = conn.parse().unwrap();
            let after: tokio_postgres::Config = split(conn).rest.parse().unwrap();
            assert_eq!(after.get_hosts(), before.get_hosts());
            assert_eq!(after.get_ports(), before.get_ports());
            assert_eq!(after.get_user(), before.get_user());
            assert_eq!(after.get_password(), before.get_password());
            assert_eq!(after.get_dbname(), before.get_dbname());
        }
    }

    #[test]
    fn every_libpq_mode_parses_and_others_are_refused_with_the_list() {
        for mode in SslMode::ALL {
            assert_eq!(mode.to_string().parse::<SslMode>(), Ok(mode));
        }
        let err = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn the_mode_is_prefer_unless_given_and_verify_modes_need_a_ca() {
        let none = TlsOptions::default();
        let (tls, rest) = Tls::from_connection_string("postgres://db/c", &none).unwrap();
        assert_eq!(
            (tls.mode, rest.as_str()),
            (SslMode::Prefer, "postgres://db/c")
        );

        for conn in [
            "postgres://db/c?sslmode=verify-ca",
            "host=db sslmode=verify-full",
        ] {
            let err = Tls::from_connection_string(conn, &none).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, TlsError::NoCa { .. }), "{text}");
            assert!(
                text.contains("--database-ca-file") && text.contains("sslrootcert"),
                "{text}"
            );
        }
        let flag_only = TlsOptions {
            sslmode: Some(SslMode::VerifyFull),
            ca_file: None,
        };
        assert!(matches!(
            Tls::from_connection_string("postgres://db/c", &flag_only),
            Err(TlsError::NoCa {
                mode: SslMode::VerifyFull
            })
        ));
    }

    #[test]
    fn the_url_and_the_flags_must_agree_when_both_give_a_setting() {
        let flags = TlsOptions {
            sslmode: Some(SslMode::Require),
            ca_file: None,
        };
        let err =
            Tls::from_connection_string("postgres://db/c?sslmode=disable", &flags).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sslmode=disable") && text.contains("--database-sslmode says require"),
            "{text}"
        );
        // The same value twice is fine.
        let (tls, _) =
            Tls::from_connection_string("postgres://db/c?sslmode=require", &flags).unwrap();
        assert_eq!(tls.mode, SslMode::Require);

        let err = Tls::from_connection_string(
            "postgres://db/c?sslrootcert=/a.pem",
            &TlsOptions {
                sslmode: None,
                ca_file: Some("/b.pem".into()),
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("--database-ca-file says /b.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_mode_or_a_missing_or_empty_ca_file_names_the_setting() {
        let none = TlsOptions::default();
        let err = Tls::from_connection_string("postgres://db/c?sslmode=strict", &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"strict\"") && err.contains("--database-sslmode"),
            "{err}"
        );

        let err = Tls::from_connection_string(
            "postgres://db/c?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            &none,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && err.contains("--database-ca-file"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Tls::from_connection_string(
            "postgres://db/c?sslmode=require",
            &TlsOptions {
                sslmode: None,
                ca_file: Some(empty),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("holds no certificate") && err.contains("PEM"),
            "{err}"
        );
    }

    #[test]
    fn sslmode_disable_reads_no_ca() {
        let (tls, _) = Tls::from_connection_string(
            "postgres://db/c?sslmode=disable&sslrootcert=/nonexistent/ca.pem",
            &TlsOptions::default(),
        )
        .unwrap();
        assert_eq!((tls.mode, tls.ca_file), (SslMode::Disable, None));
    }
}
