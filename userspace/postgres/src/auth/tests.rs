//! The login against a server side computed here (RFC 5802 §3, checked against RFC 7677 §3's
//! test vector), byte by byte. postgres-protocol's client nonce cannot be injected, so the
//! server reads it from the client-first-message, as a real server does.

use super::*;
use crate::frame::body;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

fn credentials() -> Credentials {
    Credentials {
        user: "alice".into(),
        password: Zeroizing::new(b"pencil".to_vec()),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &[0, 0, 0, 1]].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

/// The server's side of SCRAM-SHA-256 for one password.
struct ScramServer {
    password: &'static [u8],
    salt: Vec<u8>,
    iterations: u32,
    nonce_suffix: &'static str,
    /// What c= must decode to: the gs2 header and the channel binding data.
    expected_cbind: Vec<u8>,
}

impl ScramServer {
    fn rfc7677(expected_cbind: &[u8]) -> Self {
        Self {
            password: b"pencil",
            salt: STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            iterations: 4096,
            nonce_suffix: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            expected_cbind: expected_cbind.to_vec(),
        }
    }

    fn server_first(&self, client_nonce: &str) -> String {
        format!(
            "r={client_nonce}{},s={},i={}",
            self.nonce_suffix,
            STANDARD.encode(&self.salt),
            self.iterations
        )
    }

    /// The proof the client must send and the signature the server returns.
    fn proof_and_signature(&self, auth_message: &str) -> ([u8; 32], [u8; 32]) {
        let salted = hi(self.password, &self.salt, self.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key");
        (proof, hmac(&server_key, auth_message.as_bytes()))
    }
}

#[test]
fn test_server_reproduces_rfc7677_vector() {
    let server = ScramServer::rfc7677(b"n,,");
    let server_first = server.server_first("rOprNGfwEbeRWgbNEkqO");
    assert_eq!(
        server_first,
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let auth_message = format!(
        "n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    );
    let (proof, signature) = server.proof_and_signature(&auth_message);
    assert_eq!(
        STANDARD.encode(proof),
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    assert_eq!(
        STANDARD.encode(signature),
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

/// SASLInitialResponse (§55.7): 'p', length, mechanism String, Int32 data length, data.
fn split_initial_response(msg: &[u8]) -> (String, String) {
    assert_eq!(msg[0], b'p');
    assert_eq!(
        usize::try_from(u32::from_be_bytes(msg[1..5].try_into().unwrap())).unwrap(),
        msg.len() - 1
    );
    let b = body(msg);
    let nul = b.iter().position(|&c| c == 0).unwrap();
    let mechanism = String::from_utf8(b[..nul].to_vec()).unwrap();
    let len = u32::from_be_bytes(b[nul + 1..nul + 5].try_into().unwrap());
    let data = &b[nul + 5..];
    assert_eq!(data.len(), usize::try_from(len).unwrap());
    (mechanism, String::from_utf8(data.to_vec()).unwrap())
}

fn sasl_response_data(msg: &[u8]) -> String {
    assert_eq!(msg[0], b'p');
    String::from_utf8(body(msg).to_vec()).unwrap()
}

fn send(step: AuthStep) -> Vec<u8> {
    match step {
        AuthStep::Send(m) => m,
        other => panic!("expected Send, got {other:?}"),
    }
}

/// Runs the whole exchange; `tamper` may change the server-final-message. Returns the
/// mechanism, the gs2 header the client used and the result of feeding the final message.
fn exchange(
    policy: ChannelBindingPolicy,
    offered: &[&str],
    expected_cbind: &[u8],
    tamper: impl FnOnce(String) -> String,
) -> (Authenticator, String, Result<AuthStep, AuthError>) {
    let server = ScramServer::rfc7677(expected_cbind);
    let mut auth = Authenticator::new(credentials(), policy);
    let first = send(
        auth.feed(&AuthRequest::Sasl {
            mechanisms: offered.to_vec(),
        })
        .unwrap(),
    );
    let (mechanism, client_first) = split_initial_response(&first);
    // gs2-header = flag "," [authzid] ","; then client-first-message-bare.
    let header_end = client_first.match_indices(',').nth(1).unwrap().0 + 1;
    let (gs2, bare) = client_first.split_at(header_end);
    // PostgreSQL takes the user from the startup packet; libpq and postgres-protocol send n=.
    let nonce = bare.strip_prefix("n=,r=").unwrap();
    assert_eq!(nonce.len(), 24);
    let server_first = server.server_first(nonce);
    let final_msg = send(
        auth.feed(&AuthRequest::SaslContinue(server_first.as_bytes()))
            .unwrap(),
    );
    let client_final = sasl_response_data(&final_msg);
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    let (cbind, r) = without_proof.split_once(',').unwrap();
    assert_eq!(
        STANDARD.decode(cbind.strip_prefix("c=").unwrap()).unwrap(),
        server.expected_cbind
    );
    assert_eq!(r, format!("r={nonce}{}", server.nonce_suffix));
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let (expected_proof, signature) = server.proof_and_signature(&auth_message);
    assert_eq!(proof, STANDARD.encode(expected_proof), "client proof");
    let server_final = tamper(format!("v={}", STANDARD.encode(signature)));
    let result = auth.feed(&AuthRequest::SaslFinal(server_final.as_bytes()));
    assert_eq!(auth.mechanism(), Some(mechanism.as_str()));
    (auth, format!("{mechanism} {gs2}"), result)
}

#[test]
fn scram_without_tls_uses_flag_n() {
    let (mut auth, how, result) = exchange(
        ChannelBindingPolicy::None,
        &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
        b"n,,",
        |f| f,
    );
    assert_eq!(how, "SCRAM-SHA-256 n,,");
    assert_eq!(result.unwrap(), AuthStep::Wait);
    assert_eq!(auth.feed(&AuthRequest::Ok).unwrap(), AuthStep::Done);
    assert!(!auth.channel_bound());
}

#[test]
fn scram_plus_binds_the_certificate_hash() {
    let hash = vec![0xab; 32];
    let expected = [b"p=tls-server-end-point,,".as_slice(), &hash].concat();
    let (mut auth, how, result) = exchange(
        ChannelBindingPolicy::TlsServerEndPoint(hash),
        &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
        &expected,
        |f| f,
    );
    assert_eq!(how, "SCRAM-SHA-256-PLUS p=tls-server-end-point,,");
    assert_eq!(result.unwrap(), AuthStep::Wait);
    assert_eq!(auth.feed(&AuthRequest::Ok).unwrap(), AuthStep::Done);
    assert!(auth.channel_bound());
}

#[test]
fn tls_without_plus_on_offer_says_y_so_a_downgrade_shows() {
    let (_, how, result) = exchange(
        ChannelBindingPolicy::TlsServerEndPoint(vec![1; 32]),
        &["SCRAM-SHA-256"],
        b"y,,",
        |f| f,
    );
    assert_eq!(how, "SCRAM-SHA-256 y,,");
    assert_eq!(result.unwrap(), AuthStep::Wait);
}

#[test]
fn wrong_server_signature_is_an_error() {
    let (mut auth, _, result) = exchange(
        ChannelBindingPolicy::None,
        &["SCRAM-SHA-256"],
        b"n,,",
        |_| format!("v={}", STANDARD.encode([7; 32])),
    );
    assert!(
        matches!(result, Err(AuthError::ServerSignature)),
        "{result:?}"
    );
    // And the login cannot be completed afterwards.
    assert!(matches!(
        auth.feed(&AuthRequest::Ok),
        Err(AuthError::OutOfOrder { .. })
    ));
}

#[test]
fn malformed_or_refusing_server_final() {
    for (bad, want) in [
        ("v=!!!", "malformed"),
        ("v=AAAA", "malformed"),
        ("x=1", "malformed"),
        ("\u{7f}\u{80}", "malformed"),
        ("e=invalid-proof", "refused"),
    ] {
        let (_, _, result) = exchange(
            ChannelBindingPolicy::None,
            &["SCRAM-SHA-256"],
            b"n,,",
            |_| bad.to_owned(),
        );
        match (want, result) {
            ("malformed", Err(AuthError::MalformedScramFinal)) => {}
            ("refused", Err(AuthError::ScramRefused { reason })) => {
                assert_eq!(reason, "invalid-proof")
            }
            (_, other) => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn server_first_errors() {
    for bad in [
        "r=someone-elses-nonce,s=QSXCR+Q6sek8bf92,i=4096",
        "garbage",
        "r=,s=,i=",
    ] {
        let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
        auth.feed(&AuthRequest::Sasl {
            mechanisms: vec!["SCRAM-SHA-256"],
        })
        .unwrap();
        let err = auth
            .feed(&AuthRequest::SaslContinue(bad.as_bytes()))
            .unwrap_err();
        assert!(
            matches!(err, AuthError::ScramChallenge(_)),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn too_many_iterations_are_refused() {
    let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
    let first = send(
        auth.feed(&AuthRequest::Sasl {
            mechanisms: vec!["SCRAM-SHA-256"],
        })
        .unwrap(),
    );
    let (_, client_first) = split_initial_response(&first);
    let nonce = client_first.strip_prefix("n,,n=,r=").unwrap();
    let challenge = format!("r={nonce}x,s=QSXCR+Q6sek8bf92,i=100000000");
    assert!(matches!(
        auth.feed(&AuthRequest::SaslContinue(challenge.as_bytes())),
        Err(AuthError::ScramChallenge(_))
    ));
}

#[test]
fn no_acceptable_mechanism() {
    let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
    // PLUS alone is useless without TLS.
    let err = auth
        .feed(&AuthRequest::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS", "OAUTHBEARER"],
        })
        .unwrap_err();
    match err {
        AuthError::NoMechanism { offered } => {
            assert_eq!(offered, ["SCRAM-SHA-256-PLUS", "OAUTHBEARER"])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cleartext_password() {
    let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
    let msg = send(auth.feed(&AuthRequest::CleartextPassword).unwrap());
    assert_eq!(msg, b"p\0\0\0\x0bpencil\0");
    assert_eq!(auth.feed(&AuthRequest::Ok).unwrap(), AuthStep::Done);
}

#[test]
fn md5_password() {
    let mut auth = Authenticator::new(
        Credentials {
            user: "alice".into(),
            password: Zeroizing::new(b"s3cret".to_vec()),
        },
        ChannelBindingPolicy::None,
    );
    let msg = send(
        auth.feed(&AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
            .unwrap(),
    );
    // md5(md5(password || user) in hex || salt), computed independently with Python hashlib.
    let mut expected = b"p\0\0\0\x28".to_vec();
    expected.extend_from_slice(b"md5b79948bbeb35dee03ab8fe15a839030b\0");
    assert_eq!(msg, expected);
    assert_eq!(auth.feed(&AuthRequest::Ok).unwrap(), AuthStep::Done);
}

#[test]
fn trust_is_done_at_once() {
    let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
    assert_eq!(auth.feed(&AuthRequest::Ok).unwrap(), AuthStep::Done);
    assert!(!auth.channel_bound());
}

#[test]
fn unsupported_methods() {
    for (code, method) in [
        (2, "Kerberos V5"),
        (7, "GSSAPI"),
        (9, "SSPI"),
        (42, "an unknown"),
    ] {
        let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
        match auth.feed(&AuthRequest::Other(code)) {
            Err(AuthError::Unsupported { method: m, code: c }) => {
                assert_eq!((m, c), (method, code))
            }
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[test]
fn out_of_order_requests() {
    let cases: [&[AuthRequest<'static>]; 6] = [
        &[AuthRequest::SaslContinue(b"r=x")],
        &[AuthRequest::SaslFinal(b"v=x")],
        &[
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"],
            },
            // AuthenticationOk before the server proved itself: refused.
            AuthRequest::Ok,
        ],
        &[
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"],
            },
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"],
            },
        ],
        &[
            AuthRequest::CleartextPassword,
            AuthRequest::CleartextPassword,
        ],
        &[AuthRequest::Ok, AuthRequest::Ok],
    ];
    for requests in cases {
        let mut auth = Authenticator::new(credentials(), ChannelBindingPolicy::None);
        let (last, first) = requests.split_last().unwrap();
        for r in first {
            auth.feed(r).unwrap();
        }
        assert!(
            matches!(auth.feed(last), Err(AuthError::OutOfOrder { .. })),
            "{requests:?}"
        );
    }
}

#[test]
fn password_with_nul() {
    let mut auth = Authenticator::new(
        Credentials {
            user: "u".into(),
            password: Zeroizing::new(b"a\0b".to_vec()),
        },
        ChannelBindingPolicy::None,
    );
    assert!(matches!(
        auth.feed(&AuthRequest::CleartextPassword),
        Err(AuthError::PasswordNul)
    ));
}

#[test]
fn debug_never_shows_the_password() {
    let auth = Authenticator::new(
        credentials(),
        ChannelBindingPolicy::TlsServerEndPoint(vec![1]),
    );
    let text = format!("{auth:?} {:?}", credentials());
    assert!(!text.contains("pencil"), "{text}");
    assert!(text.contains("alice"));
}

#[test]
fn messages_say_what_to_do() {
    let e = AuthError::Unsupported {
        method: "GSSAPI",
        code: 7,
    };
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
    let e = AuthError::ScramRefused {
        reason: "invalid-proof".into(),
    };
    assert!(e.to_string().contains("password"), "{e}");
}
