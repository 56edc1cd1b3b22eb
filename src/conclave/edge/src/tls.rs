//! TLS on the client listeners (rustls), with etcd's client-port TLS options.
//!
//! Theory of operation: [`Tls`] holds the options (server certificate chain and key in PEM,
//! optionally a client CA bundle = mutual TLS, a client CRL, the SAN names a client certificate
//! must carry, the protocol versions and cipher suites) and the rustls `ServerConfig` built from
//! them. Every accepted connection asks it for an acceptor; at most once a second that call looks
//! at the files' metadata (mtime, ctime, size, inode) and, when any changed, builds a new
//! `ServerConfig` from them, so new handshakes use the new certificate, key, CA and CRL while
//! open connections keep theirs (etcd reloads per handshake too). Files that do not load leave
//! the previous configuration in use and are reported once through the `notice` callback (the
//! member's log); construction with such files is an error that says which file and why.
//!
//! Choices where rustls and Go differ: a CRL is checked against its issuer's signature (Go only
//! compares serials); a certificate no given CRL covers is accepted (as Go does). `cipher_suites`
//! takes Go's / IANA's names; TLS 1.2 names choose the TLS 1.2 suites, and TLS 1.3 names, when any
//! are given, choose the TLS 1.3 suites (Go always offers all TLS 1.3 suites).
//! ALPN offers `h2` and `http/1.1`; a client that picks neither is sniffed like a plain socket.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::verify_server_name;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, CipherSuite, DigitallySignedStruct, DistinguishedName, InconsistentKeys, RootCertStore,
    ServerConfig, SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

/// How often, at most, the files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Severity of a notice, as Python's `logging` levels.
pub const INFO: u8 = 20;
pub const WARNING: u8 = 30;

/// A reported event (level, text): a reload, or files that do not load.
pub type Notice = Box<dyn Fn(u8, String) + Send + Sync>;

/// The TLS options of the client listeners, as given (file paths, names).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: Option<String>,
    pub crl_file: Option<String>,
    pub allowed_hostnames: Vec<String>,
    pub min_version: String,
    pub max_version: String,
    pub cipher_suites: Vec<String>,
}

/// `TLS1.2` / `TLS1.3` (etcd's spelling) as a protocol version, ordered.
fn version(v: &str) -> Result<u8, String> {
    match v {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        _ => Err(format!("unexpected TLS version {v:?} (must be one of: TLS1.2, TLS1.3)")),
    }
}

/// The protocol versions from `min`..=`max` (`max` empty: the newest).
fn versions(min: &str, max: &str) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let lo = version(min)?;
    let hi = if max.is_empty() { 3 } else { version(max)? };
    if lo > hi {
        return Err(format!("min version ({min}) is greater than max version ({max})"));
    }
    let mut out = Vec::new();
    if lo <= 2 {
        out.push(&rustls::version::TLS12);
    }
    if hi >= 3 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

/// Go's or IANA's name of a cipher suite in rustls' spelling (`TLS13_` for TLS 1.3 suites, and
/// Go's short aliases of the ChaCha20 suites completed).
fn rustls_name(name: &str) -> String {
    let n = name.trim();
    if let Some(rest) = n.strip_prefix("TLS_").filter(|r| r.starts_with("AES_") || r.starts_with("CHACHA20_")) {
        return format!("TLS13_{rest}");
    }
    if n.ends_with("_CHACHA20_POLY1305") {
        return format!("{n}_SHA256");
    }
    n.to_string()
}

fn display_name(s: &SupportedCipherSuite) -> String {
    let n = s.suite().as_str().unwrap_or("?");
    n.strip_prefix("TLS13_").map(|r| format!("TLS_{r}")).unwrap_or_else(|| n.to_string())
}

/// The cipher suites named in `names` (empty: rustls' defaults), from the ones rustls offers.
fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, String> {
    let all = ring::ALL_CIPHER_SUITES;
    if names.is_empty() {
        return Ok(ring::DEFAULT_CIPHER_SUITES.to_vec());
    }
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for name in names {
        let want = rustls_name(name);
        match all.iter().find(|s| s.suite().as_str() == Some(want.as_str())) {
            Some(s) => {
                if !chosen.iter().any(|c| c.suite() == s.suite()) {
                    chosen.push(*s);
                }
            }
            None => {
                let known = (0..=u16::MAX).any(|c| CipherSuite::from(c).as_str() == Some(want.as_str()));
                let offered: Vec<String> = all.iter().map(display_name).collect();
                return Err(if known {
                    format!("TLS cipher suite {name:?} is not supported by the compiled edge (it offers {})", offered.join(", "))
                } else {
                    format!("unexpected TLS cipher suite {name:?} (the compiled edge offers {})", offered.join(", "))
                });
            }
        }
    }
    let tls13 = |s: &SupportedCipherSuite| s.version() == &rustls::version::TLS13;
    if !chosen.iter().any(tls13) {
        // Go semantics: the list chooses the TLS 1.2 suites; TLS 1.3 offers all of its own.
        chosen.extend(all.iter().filter(|s| tls13(s)).copied());
    }
    Ok(chosen)
}

fn certs(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("{what} {path}: {}", pem_error(e)))?;
    let certs = iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{what} {path}: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{what} {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other})"),
    }
}

/// The CRLs in `path`: PEM sections, or one DER CRL (Go's parser takes both).
fn crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("client CRL file {path}: {e}"))?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client CRL file {path}: {}", pem_error(e)))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    Err(format!("client CRL file {path}: no CRL in it (PEM \"X509 CRL\" or DER)"))
}

/// A client certificate verifier that also requires one of `names` in the certificate's SAN
/// (DNS names, with wildcards, or IP addresses): etcd's `--client-cert-allowed-hostname`.
#[derive(Debug)]
struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for AllowedNames {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        if self.names.iter().any(|n| verify_server_name(&cert, n).is_ok()) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What identifies a file's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
    size: u64,
    ino: u64,
    dev: u64,
}

fn stamp(path: &str) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()), size: m.len(), ino: m.ino(), dev: m.dev() })
}

struct State {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<Stamp>>,
    next_check: Instant,
}

/// The TLS configuration of the client listeners, reloaded when its files change.
pub struct Tls {
    opts: Options,
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    names: Vec<ServerName<'static>>,
    state: Mutex<State>,
    notice: Notice,
}

/// The protocol versions and the crypto provider with the cipher suites for these options.
pub fn protocol(
    min: &str,
    max: &str,
    suites: &[String],
) -> Result<(Vec<&'static SupportedProtocolVersion>, Arc<CryptoProvider>), String> {
    let versions = versions(min, max)?;
    if !suites.is_empty() && versions == [&rustls::version::TLS13] {
        return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
    }
    let provider = Arc::new(CryptoProvider { cipher_suites: cipher_suites(suites)?, ..ring::default_provider() });
    Ok((versions, provider))
}

impl Tls {
    /// Check the options and load the files: any problem is an error naming the file and why.
    pub fn new(opts: Options, notice: Notice) -> Result<Self, String> {
        let (versions, provider) = protocol(&opts.min_version, &opts.max_version, &opts.cipher_suites)?;
        if opts.client_ca_file.is_none() && opts.crl_file.is_some() {
            return Err("a client CRL file needs a client CA file (client certificate auth)".into());
        }
        if opts.client_ca_file.is_none() && !opts.allowed_hostnames.is_empty() {
            return Err("allowed client certificate hostnames need a client CA file (client certificate auth)".into());
        }
        let mut names = Vec::new();
        for h in &opts.allowed_hostnames {
            let n = ServerName::try_from(h.trim().to_string())
                .map_err(|_| format!("allowed client certificate hostname {h:?} is neither a DNS name nor an IP address"))?;
            names.push(n);
        }
        let stamps = file_stamps(&opts);
        let (config, warning) = load(&opts, &provider, &versions, &names)?;
        if let Some(w) = warning {
            notice(WARNING, w);
        }
        let state = Mutex::new(State { config, stamps, next_check: Instant::now() + RELOAD_CHECK });
        Ok(Tls { opts, provider, versions, names, state, notice })
    }

    /// An acceptor with the current configuration; reloads it first when its files changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        if now >= st.next_check {
            st.next_check = now + RELOAD_CHECK;
            let stamps = file_stamps(&self.opts);
            if stamps != st.stamps {
                st.stamps = stamps;
                match load(&self.opts, &self.provider, &self.versions, &self.names) {
                    Ok((cfg, warning)) => {
                        st.config = cfg;
                        (self.notice)(INFO, format!("TLS: reloaded the client port's files ({})", files(&self.opts).join(", ")));
                        if let Some(w) = warning {
                            (self.notice)(WARNING, w);
                        }
                    }
                    Err(e) => (self.notice)(WARNING, format!("TLS: the client port's files changed but do not load, so the previous ones stay in use: {e}")),
                }
            }
        }
        TlsAcceptor::from(st.config.clone())
    }

}

fn files(o: &Options) -> Vec<&str> {
    let mut v = vec![o.cert_file.as_str(), o.key_file.as_str()];
    v.extend(o.client_ca_file.as_deref());
    v.extend(o.crl_file.as_deref());
    v
}

fn file_stamps(o: &Options) -> Vec<Option<Stamp>> {
    files(o).into_iter().map(stamp).collect()
}

/// Build a server configuration from the files as they are now; also a warning about them, if any.
fn load(
    o: &Options,
    provider: &Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    names: &[ServerName<'static>],
) -> Result<(Arc<ServerConfig>, Option<String>), String> {
    let (cert_file, key_file) = (o.cert_file.as_str(), o.key_file.as_str());
    let chain = certs(cert_file, "cert file")?;
    let warning = check_validity(&chain[0], cert_file, SystemTime::now())?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("key file {key_file}: no PEM private key in it"),
        other => format!("key file {key_file}: {}", pem_error(other)),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions {:?}..{:?} with the cipher suites given: {e}", o.min_version, o.max_version))?;
    let builder = match &o.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client CA file")? {
                roots.add(c).map_err(|e| format!("client CA file {ca}: {e}"))?;
            }
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &o.crl_file {
                vb = vb.with_crls(crls(crl)?).allow_unknown_revocation_status();
            }
            let verifier = vb.build().map_err(|e| match e {
                VerifierBuilderError::InvalidCrl(rustls::CertRevocationListError::ParseError) => format!(
                    "client CRL file {}: not a CRL that can be read (an X.509 v2 CRL with its extensions, such as the CRL number, is needed; v1 CRLs are not read)",
                    o.crl_file.as_deref().unwrap_or("")
                ),
                VerifierBuilderError::InvalidCrl(c) => format!("client CRL file {}: {c:?}", o.crl_file.as_deref().unwrap_or("")),
                other => format!("client CA file {ca}: {other}"),
            })?;
            if names.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(AllowedNames { inner: verifier, names: names.to_vec() }))
            }
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            format!("key file {key_file} does not match cert file {cert_file} (a different key pair)")
        }
        other => format!("cert file {cert_file} and key file {key_file}: {other}"),
    })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), warning))
}

/// A certificate's validity bound: seconds since the epoch, and the time as written (UTC).
#[derive(Debug, PartialEq, Eq)]
struct Time {
    unix: i64,
    text: String,
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An X.509 UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`).
fn asn1_time(tag: u8, v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 if s.len() == 13 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 15 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    if !rest.ends_with('Z') || !rest[..10].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| -> i64 { rest[i..i + 2].parse().unwrap_or(0) };
    let (mo, d, h, mi, se) = (n(0), n(2), n(4), n(6), n(8));
    let unix = days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    Some(Time { unix, text: format!("{year:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02} UTC") })
}

/// The fields of a certificate's TBSCertificate after the optional version: serial, signature
/// algorithm, issuer, validity, subject, ...
fn tbs_fields(der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    const SEQ: u8 = 0x30;
    let (SEQ, cert, _) = tlv(der)? else { return None };
    let (SEQ, mut tbs, _) = tlv(cert)? else { return None };
    let mut out = Vec::new();
    while !tbs.is_empty() {
        let (tag, v, rest) = tlv(tbs)?;
        tbs = rest;
        if !(out.is_empty() && tag == 0xa0) {
            out.push((tag, v));
        }
    }
    Some(out)
}

/// (notBefore, notAfter) of a DER certificate.
fn validity(der: &[u8]) -> Option<(Time, Time)> {
    let fields = tbs_fields(der)?;
    let &(0x30, v) = fields.get(3)? else { return None };
    let (t1, v1, rest) = tlv(v)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((asn1_time(t1, v1)?, asn1_time(t2, v2)?))
}

/// A server certificate that expired is an error saying when; one that is not valid yet (a clock
/// behind the CA's) only a warning, since Go serves it too and clients will take it soon.
fn check_validity(cert: &CertificateDer<'_>, path: &str, now: SystemTime) -> Result<Option<String>, String> {
    let Some((not_before, not_after)) = validity(cert.as_ref()) else {
        return Err(format!("cert file {path}: the first certificate is not a valid X.509 certificate"));
    };
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if now > not_after.unix {
        return Err(format!("cert file {path}: the certificate expired at {} (notAfter)", not_after.text));
    }
    if now < not_before.unix {
        return Ok(Some(format!(
            "TLS: cert file {path}: the certificate is not valid before {} (notBefore): clients refuse it until then",
            not_before.text
        )));
    }
    Ok(None)
}

/// A stream whose first bytes were already read (to sniff the protocol): they are replayed first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.prefix.len() {
            let n = (me.prefix.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// The subject common name of a DER certificate (the last CN when there are several, as grpc's
/// `x509_common_name` does), or None.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let fields = tbs_fields(der)?;
    let &(0x30, mut subject) = fields.get(4)? else { return None };
    let mut cn = None;
    while !subject.is_empty() {
        let (_, mut rdn, next) = tlv(subject)?;
        subject = next;
        while !rdn.is_empty() {
            let (_, atv, next) = tlv(rdn)?;
            rdn = next;
            let (0x06, oid, value) = tlv(atv)? else { continue };
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = tlv(value)?;
                cn = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_become_unix_seconds_and_utc_text() {
        let t = asn1_time(0x17, b"260102030405Z").unwrap();
        assert_eq!(t.unix, 1_767_323_045);
        assert_eq!(t.text, "2026-01-02 03:04:05 UTC");
        assert_eq!(asn1_time(0x17, b"700101000000Z").unwrap().unix, 0);
        assert_eq!(asn1_time(0x18, b"20000229235959Z").unwrap().unix, 951_868_799);
        assert_eq!(asn1_time(0x17, b"2601020304Z"), None);
        assert_eq!(asn1_time(0x18, b"2000022923595xZ"), None);
    }

    #[test]
    fn versions_follow_etcd_spelling_and_order() {
        assert_eq!(versions("TLS1.2", "").unwrap().len(), 2);
        assert_eq!(versions("TLS1.3", "").unwrap(), vec![&rustls::version::TLS13]);
        assert_eq!(versions("TLS1.2", "TLS1.2").unwrap(), vec![&rustls::version::TLS12]);
        assert!(versions("TLS1.3", "TLS1.2").unwrap_err().contains("greater than max version"));
        assert!(versions("TLS1.1", "").unwrap_err().contains("must be one of: TLS1.2, TLS1.3"));
    }

    #[test]
    fn cipher_suite_names_map_to_rustls_suites() {
        let s = cipher_suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).unwrap();
        let names: Vec<String> = s.iter().map(display_name).collect();
        assert_eq!(names[0], "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        // Go semantics: naming no TLS 1.3 suite leaves all of them on.
        assert_eq!(s.iter().filter(|c| c.version() == &rustls::version::TLS13).count(), 3);
        let s = cipher_suites(&["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(), "TLS_AES_128_GCM_SHA256".into()]).unwrap();
        assert_eq!(s.iter().map(display_name).collect::<Vec<_>>(), ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]);
        let e = cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).unwrap_err();
        assert!(e.contains("is not supported by the compiled edge"), "{e}");
        let e = cipher_suites(&["TLS_NO_SUCH_SUITE".into()]).unwrap_err();
        assert!(e.starts_with("unexpected TLS cipher suite \"TLS_NO_SUCH_SUITE\""), "{e}");
        assert!(protocol("TLS1.3", "", &["TLS_AES_128_GCM_SHA256".into()]).is_err());
    }

    #[test]
    fn tlv_reads_short_and_long_lengths_and_refuses_truncation() {
        assert_eq!(tlv(&[0x04, 0x01, 0xaa, 0xbb]), Some((0x04, &[0xaa][..], &[0xbb][..])));
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 128][..]].concat();
        assert_eq!(tlv(&long).map(|(_, c, r)| (c.len(), r.len())), Some((128, 0)));
        assert_eq!(tlv(&[0x04, 0x05, 0x00]), None);
        assert_eq!(subject_cn(b"not a certificate"), None);
    }
}
