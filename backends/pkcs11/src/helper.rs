//! The helper process: it loads the PKCS#11 module, logs in and holds the
//! sessions, and does nothing but the device calls the broker sends it
//! ([`crate::wire`]). Policy (ACLs, audit, key rings) stays in the broker.
//!
//! It reads requests from its stdin, a socketpair end the broker passed, and
//! answers on the same socket. Each request runs on one of `max_sessions`
//! worker threads, so a slow call does not hold the others. When the broker
//! closes its end (or dies), the helper exits.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, mpsc};

use sealbroker_core::BackendError;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::wire::{self, KeySpec, PinSpec, Request, Response, TokenSpec};
use crate::{Call, Existing, HandleCache, KeySelector, KeyState, PinSource, TokenPool, TokenSelector};

/// `sealbroker pkcs11-helper`: serves the socket the broker passed as stdin.
pub fn serve_stdin() -> ExitCode {
    let stream = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("sealbroker pkcs11-helper: stdin is not usable: {e}");
            return ExitCode::from(2);
        }
    };
    serve(stream)
}

/// What one helper serves: one token on one module.
struct Helper {
    pool: TokenPool,
    token: TokenSelector,
    lib: std::path::PathBuf,
    pin: PinSource,
    keys: Mutex<HashMap<KeySpec, Arc<KeyState>>>,
}

impl Helper {
    fn key(&self, spec: &KeySpec) -> Arc<KeyState> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(spec.clone())
            .or_insert_with(|| {
                Arc::new(KeyState {
                    selector: KeySelector::from_spec(spec),
                    token: self.pool.describe(),
                    cache: Mutex::new(HandleCache::default()),
                    ever_found: Default::default(),
                })
            })
            .clone()
    }

    fn perform(&self, spec: &KeySpec, call: Call) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let decrypting = matches!(call, Call::Decrypt { .. });
        let key = self.key(spec);
        self.pool
            .run_on_this_thread(&|session, generation| key.perform(session, generation, &call))
            .map_err(|e| crate::op_error(e, decrypting))
    }

    fn handle(&self, request: Request) -> Response {
        let (id, result) = match request {
            Request::Encrypt {
                id,
                key,
                iv,
                aad,
                plaintext,
            } => (id, self.perform(&key, Call::Encrypt { iv, aad, plaintext })),
            Request::Decrypt {
                id,
                key,
                iv,
                aad,
                ciphertext,
            } => (id, self.perform(&key, Call::Decrypt { iv, aad, ciphertext })),
            Request::Sign {
                id,
                key,
                scheme,
                data,
            } => match crate::signing::scheme_of(scheme) {
                Some(scheme) => (id, self.perform(&key, Call::Sign { scheme, data })),
                None => (id, Err(BackendError::internal("unknown signature scheme"))),
            },
            Request::Verify {
                id,
                key,
                scheme,
                data,
                signature,
            } => match crate::signing::scheme_of(scheme) {
                Some(scheme) => (
                    id,
                    self.perform(
                        &key,
                        Call::Verify {
                            scheme,
                            data,
                            signature,
                        },
                    ),
                ),
                None => (id, Err(BackendError::internal("unknown signature scheme"))),
            },
            Request::PublicKey { id, key } => (id, self.perform(&key, Call::PublicKey)),
            Request::CreateKey {
                id,
                key,
                use_existing,
            } => {
                let existing = if use_existing {
                    Existing::Use
                } else {
                    Existing::Refuse
                };
                let result = crate::create_key_blocking(
                    &self.lib,
                    &self.token,
                    &self.pin,
                    &KeySelector::from_spec(&key),
                    existing,
                )
                .map(|described| Zeroizing::new(described.into_bytes()));
                (id, result)
            }
            Request::Hello { .. } => (
                0,
                Err(BackendError::internal("a second Hello on one helper connection")),
            ),
        };
        match result {
            Ok(data) => Response::Ok { id, data },
            Err(error) => Response::Err { id, error },
        }
    }
}

/// Serves one broker connection until it closes. Exits non-zero when the
/// broker sent something that is not the protocol.
pub fn serve(stream: UnixStream) -> ExitCode {
    let mut input = match stream.try_clone() {
        Ok(input) => input,
        Err(e) => {
            eprintln!("sealbroker pkcs11-helper: cannot clone the socket: {e}");
            return ExitCode::from(2);
        }
    };
    let hello = match wire::read_frame(&mut input) {
        Ok(Some(body)) => Request::decode(&body),
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealbroker pkcs11-helper: reading Hello: {e}");
            return ExitCode::from(2);
        }
    };
    let (lib, token, pin, max_sessions) = match hello {
        Ok(Request::Hello {
            lib,
            token,
            pin,
            max_sessions,
        }) => (lib, token, pin, max_sessions),
        Ok(_) => {
            eprintln!("sealbroker pkcs11-helper: the first message was not Hello");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("sealbroker pkcs11-helper: malformed Hello: {e}");
            return ExitCode::from(2);
        }
    };
    let token = match token {
        TokenSpec::Label(label) => TokenSelector::Label(label),
        TokenSpec::Slot(slot) => TokenSelector::Slot(slot),
    };
    let pin = match pin {
        PinSpec::Inline(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => PinSource::Inline(SecretString::from(text.to_owned())),
            Err(_) => {
                eprintln!("sealbroker pkcs11-helper: the PIN is not UTF-8");
                return ExitCode::from(2);
            }
        },
        PinSpec::File(path) => PinSource::File(path.into()),
    };
    let lib = std::path::PathBuf::from(lib);
    let workers = max_sessions.max(1) as usize;
    let helper = Arc::new(Helper {
        pool: TokenPool::new(lib.clone(), token.clone(), pin.clone(), workers),
        token,
        lib,
        pin,
        keys: Mutex::new(HashMap::new()),
    });
    let output = Arc::new(Mutex::new(stream));
    let (queue, jobs) = mpsc::channel::<Request>();
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..workers {
        let helper = helper.clone();
        let output = output.clone();
        let jobs = jobs.clone();
        std::thread::spawn(move || {
            loop {
                let request = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(request) => request,
                    Err(_) => return,
                };
                let body = helper.handle(request).encode();
                let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                if wire::write_frame(&mut *out, &body)
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // The broker is gone; the reader sees it too and exits.
                    return;
                }
            }
        });
    }
    loop {
        match wire::read_frame(&mut input) {
            Ok(Some(body)) => match Request::decode(&body) {
                Ok(request) => {
                    if queue.send(request).is_err() {
                        return ExitCode::from(2);
                    }
                }
                Err(e) => {
                    eprintln!("sealbroker pkcs11-helper: malformed request: {e}");
                    return ExitCode::from(2);
                }
            },
            // The broker closed its end: nothing more will be asked.
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sealbroker pkcs11-helper: reading a request: {e}");
                return ExitCode::from(2);
            }
        }
    }
}
