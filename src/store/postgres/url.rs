//! `database.url` for PostgreSQL: parsed once, its password never shown, and the TLS it asks
//! for (`sslmode`, `sslrootcert`).

use std::path::PathBuf;

/// A `postgres://` (or `postgresql://`) URL. Shown (Debug, Display) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// What tokio-postgres is given: the URL without the options spool handles itself.
    conn: String,
    /// The same, once for each host the URL names before its path (one entry, `conn`, when it
    /// names one, or names its hosts in parameters): spool tries them in turn itself.
    per_host: Vec<String>,
    /// The URL without its password, for logs.
    redacted: String,
    /// Whether TLS is used, and how.
    tls: TlsMode,
    /// CA certificates (PEM) that replace the built-in roots.
    root_cert: Option<PathBuf>,
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (`sslmode=disable`, or no `sslmode`).
    Disable,
    /// TLS when the server offers it, its certificate verified (`sslmode=prefer`).
    Prefer,
    /// TLS or no connection, the certificate verified against the roots and the host name
    /// (`sslmode=require`, `verify-ca`, `verify-full`).
    Require,
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl PostgresUrl {
    /// Parses a `postgres://user:password@host:port/db?sslmode=require` URL.
    ///
    /// # Errors
    /// A message saying what is wrong (without the password).
    pub fn parse(v: &str) -> Result<Self, String> {
        let v = v.trim();
        let (scheme, rest) = v
            .split_once("://")
            .ok_or_else(|| format!("{:?} is not a PostgreSQL URL", redact_text(v)))?;
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(format!("{:?} is not a postgres:// URL", redact_text(v)));
        }
        // Taken apart as tokio-postgres takes it apart, not by a URL parser (PostgreSQL's URLs
        // may name several hosts, `db1:5432,db2:5432`, which no URL has): the user and password
        // up to the first `@`, the hosts up to `/` or `?`, the database up to `?`, then
        // `key=value` pairs joined by `&`, each percent-encoded (a `+` is a plus sign, not a
        // space). The parts spool does not read are passed on as they were written.
        let (creds, after) = match rest.split_once('@') {
            Some((c, a)) => (Some(c), a),
            None => (None, rest),
        };
        // Anything else would put part of a password where a host, a database or a parameter
        // is read (and show it in logs): one `@`, and no `/`, `?` or `#` before it.
        if after.contains('@') || creds.is_some_and(|c| c.contains(['/', '?', '#'])) {
            return Err(format!(
                "{:?}: write @ / ? # in a user name or password percent-encoded \
                 (%40 %2F %3F %23), and @ nowhere else",
                redact_text(v)
            ));
        }
        let (location, query) = after.split_once('?').unwrap_or((after, ""));
        let mut tls = TlsMode::Disable;
        let mut root_cert = None;
        let mut kept: Vec<&str> = Vec::new();
        let mut shown: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
            match decode(k).as_str() {
                "sslmode" => {
                    tls = match decode(val).as_str() {
                        "disable" => TlsMode::Disable,
                        "prefer" | "allow" => TlsMode::Prefer,
                        "require" | "verify-ca" | "verify-full" => TlsMode::Require,
                        other => {
                            return Err(format!(
                                "sslmode={other:?} is not one of disable, prefer, require, \
                                 verify-ca, verify-full"
                            ))
                        }
                    };
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(decode(val))),
                key if key.eq_ignore_ascii_case("password") => {
                    kept.push(pair);
                    shown.push("password=***");
                }
                _ => {
                    kept.push(pair);
                    shown.push(pair);
                }
            }
        }
        // tokio-postgres applies sslmode itself: require when spool requires TLS, prefer when
        // it may use it, disable otherwise.
        let sslmode = match tls {
            TlsMode::Disable => "sslmode=disable",
            TlsMode::Prefer => "sslmode=prefer",
            TlsMode::Require => "sslmode=require",
        };
        kept.push(sslmode);
        shown.push(sslmode);
        let query = kept.join("&");
        let with = |location: &str| match creds {
            Some(c) => format!("{scheme}://{c}@{location}?{query}"),
            None => format!("{scheme}://{location}?{query}"),
        };
        let conn = with(location);
        let (hosts, path) = location.split_at(location.find('/').unwrap_or(location.len()));
        let in_params = kept.iter().any(|p| {
            let k = p.split('=').next().unwrap_or_default();
            matches!(decode(k).as_str(), "host" | "hostaddr" | "port")
        });
        let per_host = if hosts.contains(',') && !in_params {
            hosts
                .split(',')
                .map(|h| with(&format!("{h}{path}")))
                .collect()
        } else {
            vec![conn.clone()]
        };
        // Checked here so a bad option is a config error, not a failure at start.
        let cfg: tokio_postgres::Config = conn
            .parse()
            .map_err(|e| format!("{:?}: {e}", redact_text(v)))?;
        if cfg.get_hosts().is_empty() && cfg.get_hostaddrs().is_empty() {
            return Err(format!("{:?} names no host", redact_text(v)));
        }
        // tokio-postgres reads `host=a,b` as one host named "a,b".
        if kept.iter().any(|p| {
            p.split_once('=')
                .is_some_and(|(k, val)| decode(k) == "host" && decode(val).contains(','))
        }) {
            return Err(format!(
                "{:?}: name each host in a host= parameter of its own (host=a&host=b), \
                 or list them before the path (a:5432,b:5432/db)",
                redact_text(v)
            ));
        }
        if cfg.get_dbname().is_none_or(str::is_empty) {
            return Err(format!(
                "{:?} names no database (postgres://user@host/DATABASE)",
                redact_text(v)
            ));
        }
        let user = creds.map(|c| c.split_once(':').map_or(c, |(u, _)| u));
        let redacted = match user {
            Some(u) => format!("{scheme}://{u}@{location}?{}", shown.join("&")),
            None => format!("{scheme}://{location}?{}", shown.join("&")),
        };
        Ok(Self {
            conn,
            per_host,
            redacted,
            tls,
            root_cert,
        })
    }

    /// The number of hosts the URL names (each is tried in turn when connecting).
    pub(crate) fn hosts(&self) -> u32 {
        self.host_configs()
            .map_or(1, |cs| cs.iter().map(hosts_in).fold(0, u32::saturating_add))
            .max(1)
    }

    /// The connection settings, with the password.
    pub(crate) fn config(&self) -> Result<tokio_postgres::Config, String> {
        self.conn.parse().map_err(|e| format!("{self}: {e}"))
    }

    /// The connection settings for each host in turn (see `per_host`).
    pub(crate) fn host_configs(&self) -> Result<Vec<tokio_postgres::Config>, String> {
        self.per_host
            .iter()
            .map(|c| c.parse().map_err(|e| format!("{self}: {e}")))
            .collect()
    }

    /// The URL without its password.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The TLS the URL asks for.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// The CA file given by `sslrootcert`, if any.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        self.root_cert.as_deref()
    }
}

/// How many hosts tokio-postgres tries in turn for `cfg`: each host, or each address where
/// only addresses are named; at least one.
pub(crate) fn hosts_in(cfg: &tokio_postgres::Config) -> u32 {
    let n = cfg.get_hosts().len().max(cfg.get_hostaddrs().len()).max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A percent-encoded part of the URL, decoded (bytes that are not UTF-8 replaced).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A URL-ish text for an error about it: everything before its last `@` (after the scheme)
/// replaced, and the value of any `password` parameter.
fn redact_text(v: &str) -> String {
    let (scheme, rest) = v.split_once("://").unwrap_or(("", v));
    let rest = match rest.rsplit_once('@') {
        Some((_, after)) => format!("***@{after}"),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((before, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if decode(k).eq_ignore_ascii_case("password") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{before}?{}", pairs.join("&"))
        }
        None => rest,
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

/// The rustls connector for `url`: the built-in web roots, or the `sslrootcert` file's.
pub(crate) fn tls_connector(
    url: &PostgresUrl,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match url.root_cert() {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_hidden_wherever_tokio_postgres_would_read_one() {
        for (url, password) in [
            ("postgres://bob:pa%2Fss@h/db", "pa/ss"),
            ("postgres://bob:p%40ss@h1:5432,h2:5433/db", "p@ss"),
            ("postgres://bob@h/db?password=s3cret", "s3cret"),
        ] {
            let u = PostgresUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let c = u.config().unwrap();
            assert_eq!(c.get_password(), Some(password.as_bytes()), "{url}");
            assert_eq!(c.get_user(), Some("bob"), "{url}");
            for shown in [u.to_string(), format!("{u:?}")] {
                assert!(
                    !shown.contains("ss@") && !shown.contains("s3cret"),
                    "{shown}"
                );
                assert!(shown.contains("postgres://bob@h"), "{shown}");
            }
        }
        // Anything that would move part of a password elsewhere is refused, and the error
        // shows none of it.
        for (bad, secret) in [
            ("postgres://bob:p@zq@h/db", "zq"),
            ("postgres://bob:p@z/q@h/db", "z/q"),
            ("postgres://bob:p@zq?wxy@h/db", "wxy"),
            ("postgres://h/spool?user=bob&password=p@zq", "p@zq"),
            ("postgres://bob:pa/zq@h/db", "pa/zq"),
        ] {
            let e = PostgresUrl::parse(bad).unwrap_err();
            assert!(e.contains("%40") && !e.contains(secret), "{bad}: {e}");
        }
        for (bad, secret) in [
            (
                "postgres://bob@h/db?password=s3cret&connect_timeout=x",
                "s3cret",
            ),
            ("postgres://bob@h/db?PASSWORD=s3cret", "s3cret"),
            ("bob:s3cret@h/db", "s3cret"),
        ] {
            let e = PostgresUrl::parse(bad).unwrap_err();
            assert!(!e.contains(secret), "{bad}: {e}");
        }
    }

    #[test]
    fn options_are_passed_on_as_written() {
        let u = PostgresUrl::parse(
            "postgres://bob@h/db?application_name=my%20app+1&options=-c%20x%3Dy&sslmode=prefer",
        )
        .unwrap();
        let c = u.config().unwrap();
        assert_eq!(c.get_application_name(), Some("my app+1"));
        assert_eq!(c.get_options(), Some("-c x=y"));
        assert_eq!(u.tls(), TlsMode::Prefer);
        assert_eq!(
            u.to_string(),
            "postgres://bob@h/db?application_name=my%20app+1&options=-c%20x%3Dy&sslmode=prefer"
        );
    }

    #[test]
    fn several_hosts_are_kept_for_a_failover_to_the_writable_one() {
        let u = PostgresUrl::parse(
            "postgres://bob:s3cret@h1:5432,h2:5433/spool?target_session_attrs=read-write",
        )
        .unwrap();
        assert!(!u.to_string().contains("s3cret"), "{u}");
        assert!(u.to_string().contains("h1:5432,h2:5433/spool"), "{u}");
        let c = u.config().unwrap();
        assert_eq!(c.get_hosts().len(), 2);
        assert_eq!(c.get_ports(), &[5432, 5433]);
        assert_eq!(
            c.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
        // Tried one by one, each with everything else the URL says.
        let each = u.host_configs().unwrap();
        assert_eq!(each.len(), 2);
        for (c, port) in each.iter().zip([5432, 5433]) {
            assert_eq!(c.get_hosts().len(), 1);
            assert_eq!(c.get_ports(), &[port]);
            assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
            assert_eq!(c.get_dbname(), Some("spool"));
            assert_eq!(
                c.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            );
        }
        // One parameter naming two hosts would be read as one host "h1,h2".
        let e = PostgresUrl::parse("postgres://bob@/spool?host=h1,h2").unwrap_err();
        assert!(e.contains("host=a&host=b"), "{e}");
        // An address alone is a host.
        let u = PostgresUrl::parse("postgres://bob@/spool?hostaddr=127.0.0.1").unwrap();
        assert_eq!(u.config().unwrap().get_hostaddrs().len(), 1);
        // Hosts given as parameters stay with tokio-postgres.
        let u = PostgresUrl::parse("postgres://bob@/spool?host=h1&host=h2&port=5432&port=5433")
            .unwrap();
        assert_eq!(u.host_configs().unwrap().len(), 1);
        assert_eq!(u.hosts(), 2);
    }

    #[test]
    fn the_password_is_never_shown_and_sslmode_is_read() {
        let u = PostgresUrl::parse("postgres://bob:s3cret@db.example:5433/spool?sslmode=require")
            .unwrap();
        assert_eq!(u.tls(), TlsMode::Require);
        for shown in [u.to_string(), format!("{u:?}"), u.redacted().to_string()] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("bob@db.example:5433/spool"), "{shown}");
        }
        let c = u.config().unwrap();
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.get_dbname(), Some("spool"));
        let u = PostgresUrl::parse("postgresql://bob@h/db").unwrap();
        assert_eq!(u.tls(), TlsMode::Disable);
        for bad in [
            "postgres://bob:pw@h/db?sslmode=sometimes",
            "postgres://bob:pw@h/db?frobnicate=1",
            "postgres://bob:pw@h/",
        ] {
            let e = PostgresUrl::parse(bad).unwrap_err();
            assert!(!e.contains("pw@"), "{e}");
        }
    }
}
