//! The gateway logging in upstream as a client (§55.2.1 the authentication requests, §55.3
//! SASL), with a credential the user never sees.
//!
//! [`Authenticator::feed`] takes each authentication request the server sends and says what
//! to answer: cleartext password, MD5, or SCRAM-SHA-256(-PLUS) through postgres-protocol's
//! `ScramSha256`, whose server signature is checked so that a server that does not know the
//! password (an impostor) cannot complete the login.

use std::fmt;
use std::io;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::message::AuthRequest;

pub use crate::end_point::tls_server_end_point;

/// Who the gateway logs in upstream as.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    /// Zeroed when dropped.
    pub password: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the gateway can bind the SCRAM exchange to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBindingPolicy {
    /// No TLS upstream, or a certificate without an end-point hash (see
    /// [`tls_server_end_point`]): SCRAM-SHA-256 with gs2 flag 'n'.
    None,
    /// TLS upstream, with the [`tls_server_end_point`] hash of the server's certificate:
    /// SCRAM-SHA-256-PLUS when offered, else SCRAM-SHA-256 with gs2 flag 'y' (RFC 5802 §6:
    /// "client supports channel binding but thinks the server does not"), which a server
    /// that does support it refuses, so stripping -PLUS from its offer is detected.
    TlsServerEndPoint(Vec<u8>),
}

/// What to do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this whole frontend message (`p`: PasswordMessage, SASLInitialResponse or
    /// SASLResponse) to the server. It may hold the password: do not log it.
    Send(Vec<u8>),
    /// Nothing to send; wait for the next message (after a verified SASL final message).
    Wait,
    /// AuthenticationOk: the login is done; BackendKeyData, ParameterStatus and
    /// ReadyForQuery follow.
    Done,
}

/// Why the upstream login failed.
#[derive(Debug, Error)]
pub enum AuthError {
    /// A method the gateway does not speak (Kerberos, GSSAPI, SSPI, or an unknown code).
    #[error(
        "the server asks for {method} authentication (code {code}), which the gateway does not support; allow scram-sha-256 for this user in pg_hba.conf"
    )]
    Unsupported { method: &'static str, code: i32 },
    /// The server offers SASL, but no mechanism the gateway can use.
    #[error(
        "the server offers SASL mechanisms {offered:?}, none usable (the gateway speaks SCRAM-SHA-256, and SCRAM-SHA-256-PLUS only over TLS)"
    )]
    NoMechanism { offered: Vec<String> },
    /// The server-first-message is malformed, has a nonce that does not extend ours, or asks
    /// for too many iterations.
    #[error("the server's SCRAM challenge (server-first-message) is not acceptable")]
    ScramChallenge(#[source] io::Error),
    /// The server-final-message is neither `v=<base64>` nor `e=<error>`.
    #[error("the server's final SCRAM message is malformed")]
    MalformedScramFinal,
    /// The server ended the SCRAM exchange with an error: usually a wrong password.
    #[error(
        "the server refused the SCRAM proof ({reason}); check the stored credential's password"
    )]
    ScramRefused { reason: String },
    /// The server's signature does not prove it knows the password.
    #[error(
        "the server's SCRAM signature is wrong: it does not know this user's password, or something in between altered the exchange"
    )]
    ServerSignature,
    /// A request out of turn.
    #[error("the server sent {got} while the login expected {expected}")]
    OutOfOrder {
        got: &'static str,
        expected: &'static str,
    },
    /// A password with a zero byte cannot be sent as a String.
    #[error("the stored password contains a zero byte, which PostgreSQL cannot receive")]
    PasswordNul,
}

enum State {
    /// Waiting for the first request.
    Start,
    /// A password was sent; waiting for AuthenticationOk.
    PasswordSent,
    /// SASLInitialResponse sent; waiting for SASLContinue.
    ScramFirst(Box<ScramSha256>),
    /// SASLResponse sent; waiting for SASLFinal.
    ScramFinal(Box<ScramSha256>),
    /// The server's signature checked out; waiting for AuthenticationOk.
    ScramVerified,
    /// AuthenticationOk seen.
    Done,
    /// An error was returned; nothing more is accepted.
    Failed,
}

impl State {
    fn expected(&self) -> &'static str {
        match self {
            State::Start => "an authentication request",
            State::PasswordSent | State::ScramVerified => "AuthenticationOk",
            State::ScramFirst(_) => "AuthenticationSASLContinue",
            State::ScramFinal(_) => "AuthenticationSASLFinal",
            State::Done => "no more authentication messages",
            State::Failed => "nothing after a failed login",
        }
    }
}

fn request_name(request: &AuthRequest<'_>) -> &'static str {
    match request {
        AuthRequest::Ok => "AuthenticationOk",
        AuthRequest::CleartextPassword => "AuthenticationCleartextPassword",
        AuthRequest::Md5Password { .. } => "AuthenticationMD5Password",
        AuthRequest::Sasl { .. } => "AuthenticationSASL",
        AuthRequest::SaslContinue(_) => "AuthenticationSASLContinue",
        AuthRequest::SaslFinal(_) => "AuthenticationSASLFinal",
        AuthRequest::Other(_) => "an authentication request",
    }
}

/// The client side of the upstream login, one request at a time.
pub struct Authenticator {
    credentials: Credentials,
    channel_binding: ChannelBindingPolicy,
    state: State,
    mechanism: Option<&'static str>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("user", &self.credentials.user)
            .field(
                "channel_binding",
                &match self.channel_binding {
                    ChannelBindingPolicy::None => "none",
                    ChannelBindingPolicy::TlsServerEndPoint(_) => "tls-server-end-point",
                },
            )
            .field("mechanism", &self.mechanism)
            .field("waiting_for", &self.state.expected())
            .finish()
    }
}

impl Authenticator {
    pub fn new(credentials: Credentials, channel_binding: ChannelBindingPolicy) -> Self {
        Self {
            credentials,
            channel_binding,
            state: State::Start,
            mechanism: None,
        }
    }

    /// The SASL mechanism chosen, once the server offered SASL.
    pub fn mechanism(&self) -> Option<&'static str> {
        self.mechanism
    }

    /// Whether the login was bound to the TLS channel (SCRAM-SHA-256-PLUS). A gateway that
    /// requires channel binding checks this at [`AuthStep::Done`]: a server may also log the
    /// gateway in without asking for any password at all (trust).
    pub fn channel_bound(&self) -> bool {
        self.mechanism == Some(SCRAM_SHA_256_PLUS)
    }

    /// Takes the server's next authentication request and says what to send.
    pub fn feed(&mut self, request: &AuthRequest<'_>) -> Result<AuthStep, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (step, next) = self.step(state, request)?;
        self.state = next;
        Ok(step)
    }

    fn step(
        &mut self,
        state: State,
        request: &AuthRequest<'_>,
    ) -> Result<(AuthStep, State), AuthError> {
        match (state, request) {
            (State::Start | State::PasswordSent | State::ScramVerified, AuthRequest::Ok) => {
                Ok((AuthStep::Done, State::Done))
            }
            (State::Start, AuthRequest::CleartextPassword) => {
                let msg = password_message(&self.credentials.password)?;
                Ok((AuthStep::Send(msg), State::PasswordSent))
            }
            (State::Start, AuthRequest::Md5Password { salt }) => {
                let hash = Zeroizing::new(md5_hash(
                    self.credentials.user.as_bytes(),
                    &self.credentials.password,
                    *salt,
                ));
                let msg = password_message(hash.as_bytes())?;
                Ok((AuthStep::Send(msg), State::PasswordSent))
            }
            (State::Start, AuthRequest::Sasl { mechanisms }) => {
                let (mechanism, binding) = self.choose(mechanisms)?;
                self.mechanism = Some(mechanism);
                let scram = ScramSha256::new(&self.credentials.password, binding);
                let mut buf = BytesMut::new();
                frontend::sasl_initial_response(mechanism, scram.message(), &mut buf)
                    .map_err(AuthError::ScramChallenge)?;
                Ok((
                    AuthStep::Send(buf.to_vec()),
                    State::ScramFirst(Box::new(scram)),
                ))
            }
            (State::ScramFirst(mut scram), AuthRequest::SaslContinue(data)) => {
                scram.update(data).map_err(AuthError::ScramChallenge)?;
                let mut buf = BytesMut::new();
                frontend::sasl_response(scram.message(), &mut buf)
                    .map_err(AuthError::ScramChallenge)?;
                Ok((AuthStep::Send(buf.to_vec()), State::ScramFinal(scram)))
            }
            (State::ScramFinal(mut scram), AuthRequest::SaslFinal(data)) => {
                check_server_final(data)?;
                // The message is well formed, so the only way finish() fails now is a
                // signature that does not verify.
                scram.finish(data).map_err(|_| AuthError::ServerSignature)?;
                Ok((AuthStep::Wait, State::ScramVerified))
            }
            (State::Start, AuthRequest::Other(code)) => Err(AuthError::Unsupported {
                method: method_name(*code),
                code: *code,
            }),
            (state, request) => Err(AuthError::OutOfOrder {
                got: request_name(request),
                expected: state.expected(),
            }),
        }
    }

    /// The mechanism and gs2 channel-binding flag to use (RFC 5802 §6, §55.3.1).
    fn choose(&self, offered: &[&str]) -> Result<(&'static str, ChannelBinding), AuthError> {
        let has = |m: &str| offered.contains(&m);
        match &self.channel_binding {
            ChannelBindingPolicy::TlsServerEndPoint(hash) if has(SCRAM_SHA_256_PLUS) => Ok((
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash.clone()),
            )),
            ChannelBindingPolicy::TlsServerEndPoint(_) if has(SCRAM_SHA_256) => {
                Ok((SCRAM_SHA_256, ChannelBinding::unrequested()))
            }
            ChannelBindingPolicy::None if has(SCRAM_SHA_256) => {
                Ok((SCRAM_SHA_256, ChannelBinding::unsupported()))
            }
            _ => Err(AuthError::NoMechanism {
                offered: offered.iter().map(|m| (*m).to_owned()).collect(),
            }),
        }
    }
}

fn password_message(password: &[u8]) -> Result<Vec<u8>, AuthError> {
    let mut buf = BytesMut::new();
    frontend::password_message(password, &mut buf).map_err(|_| AuthError::PasswordNul)?;
    let msg = buf.to_vec();
    zeroize::Zeroize::zeroize(&mut buf[..]);
    Ok(msg)
}

/// server-final-message = (server-error / verifier) ["," extensions] (RFC 5802 §7), of which
/// PostgreSQL sends `v=<base64 signature>` or `e=<value>` alone.
fn check_server_final(data: &[u8]) -> Result<(), AuthError> {
    let text = std::str::from_utf8(data).map_err(|_| AuthError::MalformedScramFinal)?;
    if let Some(reason) = text.strip_prefix("e=") {
        return Err(AuthError::ScramRefused {
            reason: reason.to_owned(),
        });
    }
    let signature = text
        .strip_prefix("v=")
        .ok_or(AuthError::MalformedScramFinal)?;
    match STANDARD.decode(signature) {
        Ok(sig) if sig.len() == 32 => Ok(()),
        _ => Err(AuthError::MalformedScramFinal),
    }
}

/// The name of an authentication request code (§55.7 Authentication*).
fn method_name(code: i32) -> &'static str {
    match code {
        2 => "Kerberos V5",
        7 | 8 => "GSSAPI",
        9 => "SSPI",
        _ => "an unknown",
    }
}

#[cfg(test)]
mod tests;
