//! The `tls-server-end-point` channel binding (RFC 5929 §4.1): a hash of the server's
//! certificate, with the hash function its signature uses.
//!
//! Only the certificate's `signatureAlgorithm` is needed, so this walks the DER just that far
//! (Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }, RFC 5280
//! §4.1) instead of pulling in an X.509 parser: a few dozen lines, no allocation, and nothing
//! else of the certificate is trusted or used here (the TLS library has verified it).

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The channel binding data for a server certificate (`cert_der`: the leaf certificate as
/// the TLS handshake presented it), or `None` when it has none.
///
/// RFC 5929 §4.1: if the certificate's signature algorithm uses MD5 or SHA-1, hash with
/// SHA-256; otherwise with the hash the signature algorithm uses (SHA-224/256/384/512 here,
/// including RSASSA-PSS, whose hash is in its parameters). If the algorithm has no single
/// hash, the binding is undefined: that is the case of Ed25519 and Ed448 certificates, which
/// sign without a separate digest. PostgreSQL and libpq (`be_tls_get_certificate_hash`,
/// `pgtls_get_peer_certificate_hash`) fail there too, with "could not find digest for NID
/// UNDEF", so `None` also covers them and the SHA-3 signatures OpenSSL could hash but this
/// does not. On `None`, log in without channel binding (`ChannelBindingPolicy::None`, gs2
/// flag 'n'): the server never computes its own hash then, and the login works; flag 'y'
/// would be refused by a server that supports channel binding.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = signature_hash(cert_der)?;
    Some(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// `[0]` EXPLICIT, as in RSASSA-PSS-params' hashAlgorithm.
const CONTEXT_0: u8 = 0xa0;

/// The hash to bind with, from the certificate's signatureAlgorithm.
fn signature_hash(cert_der: &[u8]) -> Option<Hash> {
    let (cert, rest) = expect(cert_der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (_tbs, cert) = expect(cert, SEQUENCE)?;
    let (algorithm, _signature) = expect(cert, SEQUENCE)?;
    let (oid, params) = expect(algorithm, OID)?;
    match oid {
        // RSASSA-PSS (RFC 4055 §3.1): the hash is a parameter, SHA-1 by default.
        RSASSA_PSS => {
            let (pss, _) = expect(params, SEQUENCE)?;
            let Some((hash_alg, _)) = expect(pss, CONTEXT_0) else {
                return Some(Hash::Sha256);
            };
            let (hash_alg, _) = expect(hash_alg, SEQUENCE)?;
            let (hash_oid, _) = expect(hash_alg, OID)?;
            digest_oid(hash_oid)
        }
        _ => signature_oid(oid),
    }
}

// OIDs by their DER content bytes. pkcs-1 1.2.840.113549.1.1.n:
const PKCS1: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
// ecdsa-with-SHA1 1.2.840.10045.4.1, ecdsa-with-SHA2 family 1.2.840.10045.4.3.n:
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_SHA2: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
// id-dsa-with-sha1 1.2.840.10040.4.3; dsa-with-sha2 2.16.840.1.101.3.4.3.n:
const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
const DSA_SHA2: [u8; 8] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
// The hashes themselves: sha1 1.3.14.3.2.26, sha2 family 2.16.840.1.101.3.4.2.n:
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA2: [u8; 8] = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];

fn signature_oid(oid: &[u8]) -> Option<Hash> {
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 {
        return Some(Hash::Sha256);
    }
    let (&last, prefix) = oid.split_last()?;
    match (prefix, last) {
        // md2 (2), md5 (4) and sha1 (5) WithRSAEncryption: the weak ones bind with SHA-256.
        (p, 2 | 4 | 5) if p == PKCS1 => Some(Hash::Sha256),
        (p, 11) if p == PKCS1 => Some(Hash::Sha256),
        (p, 12) if p == PKCS1 => Some(Hash::Sha384),
        (p, 13) if p == PKCS1 => Some(Hash::Sha512),
        (p, 14) if p == PKCS1 => Some(Hash::Sha224),
        (p, 1) if p == ECDSA_SHA2 => Some(Hash::Sha224),
        (p, 2) if p == ECDSA_SHA2 => Some(Hash::Sha256),
        (p, 3) if p == ECDSA_SHA2 => Some(Hash::Sha384),
        (p, 4) if p == ECDSA_SHA2 => Some(Hash::Sha512),
        (p, 1) if p == DSA_SHA2 => Some(Hash::Sha224),
        (p, 2) if p == DSA_SHA2 => Some(Hash::Sha256),
        // Ed25519 (1.3.101.112), Ed448, SHA-3 signatures, anything unknown.
        _ => None,
    }
}

fn digest_oid(oid: &[u8]) -> Option<Hash> {
    if oid == SHA1 {
        return Some(Hash::Sha256);
    }
    let (&last, prefix) = oid.split_last()?;
    match (prefix, last) {
        (p, 1) if p == SHA2 => Some(Hash::Sha256),
        (p, 2) if p == SHA2 => Some(Hash::Sha384),
        (p, 3) if p == SHA2 => Some(Hash::Sha512),
        (p, 4) if p == SHA2 => Some(Hash::Sha224),
        _ => None,
    }
}

/// One DER TLV with tag `tag` at the front of `buf`: its contents and what follows.
fn expect(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&got, rest) = buf.split_first()?;
    if got != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits say how many length bytes follow (at most 4 here).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0_usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    // Certificates made with `openssl req -x509` (OpenSSL 3.0); the expected values are
    // `openssl dgst -sha256/-sha384/-sha512` of the files.
    #[test]
    fn hash_follows_the_signature_algorithm() {
        let cases: [(&[u8], &str); 6] = [
            (
                include_bytes!("testdata/ecdsa-sha1.der"),
                "5ab7beaced2f8ddf50eae00280f32ad33e50df62cd1a234ed0c7df9fe4e16903",
            ),
            (
                include_bytes!("testdata/ecdsa-sha256.der"),
                "1962e20048e84fa937e66d77c0825f0b82641856eef79a9faf9ecd46bbda0d2c",
            ),
            (
                include_bytes!("testdata/rsa-sha256.der"),
                "3e77500fd9faa5c5e2ad359120c56ffaa8238c3e86e4295c381ff7219fb52585",
            ),
            (
                include_bytes!("testdata/ecdsa-sha384.der"),
                "79b10b186cf260e31647d9780dcba3c784d6e9b3ee7db310f9c33da64a8093ea1b84f359543f5d2c45d19d438ebf2d15",
            ),
            (
                include_bytes!("testdata/rsa-pss-sha384.der"),
                "97c5b9f03a269a5546403493ebbee195a70ff37c457ba3cea05b2c92130ab764aa061e1c98dbd7e91467a4896c5d0fd9",
            ),
            (
                include_bytes!("testdata/ecdsa-sha512.der"),
                "8ec4f4e7f67e5736499b318ad1443fde92ff68ffea2d4b2fa4b5424bc5554a2ee66e9d43df10c48be7f68fa9d3864bc7af0cb3a79a115e1c752aa83af201917e",
            ),
        ];
        for (cert, expected) in cases {
            assert_eq!(
                tls_server_end_point(cert).map(|h| hex(&h)).as_deref(),
                Some(expected)
            );
        }
    }

    #[test]
    fn ed25519_has_no_binding() {
        assert_eq!(
            tls_server_end_point(include_bytes!("testdata/ed25519.der")),
            None
        );
    }

    #[test]
    fn pss_without_a_hash_parameter_is_sha1_so_sha256() {
        // AlgorithmIdentifier { rsassaPss, SEQUENCE {} } after an empty tbsCertificate.
        let mut alg = vec![OID, 9];
        alg.extend_from_slice(RSASSA_PSS);
        alg.extend_from_slice(&[SEQUENCE, 0]);
        let mut inner = vec![SEQUENCE, 0, SEQUENCE, u8::try_from(alg.len()).unwrap()];
        inner.extend_from_slice(&alg);
        inner.extend_from_slice(&[0x03, 1, 0]);
        let mut cert = vec![SEQUENCE, u8::try_from(inner.len()).unwrap()];
        cert.extend_from_slice(&inner);
        assert_eq!(signature_hash(&cert), Some(Hash::Sha256));
    }

    #[test]
    fn malformed_der_is_none() {
        let good: &[u8] = include_bytes!("testdata/ecdsa-sha256.der");
        for cut in 0..good.len() {
            assert_eq!(tls_server_end_point(&good[..cut]), None, "cut {cut}");
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(tls_server_end_point(&trailing), None);
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
        // A length of length over 4 bytes.
        assert_eq!(tls_server_end_point(&[SEQUENCE, 0x85, 1, 1, 1, 1, 1]), None);
    }
}
