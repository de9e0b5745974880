//! `database.url` for PostgreSQL: parsed once, its password never shown, and the TLS it asks
//! for (`sslmode`, `sslrootcert`).

use std::path::PathBuf;

/// A `postgres://` (or `postgresql://`) URL. Shown (Debug, Display) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// What tokio-postgres is given: the URL without the options spool handles itself.
    conn: String,
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
        // Taken apart by hand, not by a URL parser: PostgreSQL's URLs may name several hosts
        // (`host1:5432,host2:5432`, for a failover), which no URL has. tokio-postgres reads
        // the rest.
        let (scheme, rest) = v
            .split_once("://")
            .ok_or_else(|| format!("{:?} is not a PostgreSQL URL", redact_text(v)))?;
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(format!("{:?} is not a postgres:// URL", redact_text(v)));
        }
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut tls = TlsMode::Disable;
        let mut root_cert = None;
        let mut kept: Vec<(String, String)> = Vec::new();
        for (k, val) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "sslmode" => {
                    tls = match val.as_ref() {
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
                "sslrootcert" => root_cert = Some(PathBuf::from(val.as_ref())),
                _ => kept.push((k.into_owned(), val.into_owned())),
            }
        }
        // tokio-postgres applies sslmode itself: require when spool requires TLS, prefer when
        // it may use it, disable otherwise.
        kept.push((
            "sslmode".into(),
            match tls {
                TlsMode::Disable => "disable",
                TlsMode::Prefer => "prefer",
                TlsMode::Require => "require",
            }
            .into(),
        ));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept.iter())
            .finish();
        let conn = format!("{scheme}://{base}?{query}");
        // Checked here so a bad option is a config error, not a failure at start.
        let cfg: tokio_postgres::Config = conn
            .parse()
            .map_err(|e| format!("{:?}: {e}", redact_text(v)))?;
        if cfg.get_hosts().is_empty() {
            return Err(format!("{:?} names no host", redact_text(v)));
        }
        if cfg.get_dbname().is_none_or(str::is_empty) {
            return Err(format!(
                "{:?} names no database (postgres://user@host/DATABASE)",
                redact_text(v)
            ));
        }
        Ok(Self {
            redacted: format!("{scheme}://{}?{query}", without_password(base)),
            conn,
            tls,
            root_cert,
        })
    }

    /// The connection settings, with the password.
    pub(crate) fn config(&self) -> Result<tokio_postgres::Config, String> {
        self.conn.parse().map_err(|e| format!("{self}: {e}"))
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

/// The host part of a URL (`user:password@hosts/db`) without its password.
fn without_password(base: &str) -> String {
    let authority_end = base.find('/').unwrap_or(base.len());
    let (authority, path) = base.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}@{hosts}{path}")
        }
        None => base.to_string(),
    }
}

/// A URL-ish text with anything between `://user:` and `@` replaced (for errors about a URL
/// that did not parse).
fn redact_text(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else {
        return v.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => v.to_string(),
        },
        None => v.to_string(),
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
