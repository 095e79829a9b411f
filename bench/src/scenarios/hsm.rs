//! Scenario 2: Wrap+Unwrap of a 32-byte DEK on SoftHSM2 through the broker's
//! gRPC unix socket, against a direct cryptoki loop that encrypts and
//! decrypts the DEK on the same token key with the same number of threads,
//! one session per thread. The ratio is the share of the raw HSM throughput
//! the broker keeps.
//!
//! Two peers: the direct loop (the ceiling no out-of-process door reaches),
//! and the same loop through p11-kit's remoting (`p11-kit server` plus
//! `p11-kit-client.so` over a unix socket), the out-of-process PKCS#11 door
//! a user would pick instead of the broker.
//!
//! Mechanisms: AES-GCM, which SoftHSM does in microseconds (so the
//! comparison is mostly the broker's IPC against a function call),
//! RSA-OAEP-3072, whose private-key decrypt takes a millisecond or two, as
//! an HSM call typically does, and signing (External Keys): one Sign of a
//! SHA-256 digest with RSA-2048 PKCS#1 v1.5 or ECDSA P-256 (the broker's
//! Sign with `prehashed`; `C_Sign` with CKM_RSA_PKCS over the DigestInfo,
//! or CKM_ECDSA over the digest, which is what the broker sends the token).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::{ComparisonRow, Ctx, DIGEST, GrpcOp, KEY, PAYLOAD, RSA_KEY, SIGN_EC_KEY, SIGN_RSA_KEY, loadavg};
use crate::load::{AsyncSide, BlockingCaller, BlockingSide, compare};
use crate::peers::{Error, P11KitServer, SoftHsmToken};

/// Goal: the broker keeps at least this share of the direct loop's ops/s.
pub const TARGET_RATIO: f64 = 0.9;
/// Goal: the broker is at least as fast as p11-kit's remoting.
pub const TARGET_RATIO_P11KIT: f64 = 1.0;

/// The SHA-256 DigestInfo prefix (RFC 8017, 9.2): what CKM_RSA_PKCS signs
/// in front of the digest.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0x04, 0x20,
];

/// What the broker is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HsmPeer {
    /// The token's module loaded into the bench process.
    Direct,
    /// `p11-kit server` and `p11-kit-client.so`: PKCS#11 over a unix socket.
    P11Kit,
}

impl HsmPeer {
    fn name(self) -> &'static str {
        match self {
            HsmPeer::Direct => "direct cryptoki",
            HsmPeer::P11Kit => "p11-kit remoting",
        }
    }

    /// The least share of this peer's ops/s the broker should keep.
    fn target(self) -> f64 {
        match self {
            HsmPeer::Direct => TARGET_RATIO,
            HsmPeer::P11Kit => TARGET_RATIO_P11KIT,
        }
    }
}

/// The AAD of the direct loop; about as long as the broker's (key name and version).
const DIRECT_AAD: &[u8] = b"sealbroker-bench/bench/v1";

/// The token mechanism both sides use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HsmMechanism {
    /// AES-256-GCM on the token's secret key.
    AesGcm,
    /// RSA-OAEP (SHA-1, all SoftHSM 2.6 supports) on a 3072-bit pair.
    RsaOaep,
    /// One RSA-2048 PKCS#1 v1.5 signature of a SHA-256 digest.
    SignRsa2048,
    /// One ECDSA P-256 signature of a SHA-256 digest.
    SignP256,
}

impl HsmMechanism {
    pub fn name(self) -> &'static str {
        match self {
            HsmMechanism::AesGcm => "AES-GCM",
            HsmMechanism::RsaOaep => "RSA-OAEP-3072",
            HsmMechanism::SignRsa2048 => "Sign RSA-2048",
            HsmMechanism::SignP256 => "Sign P-256",
        }
    }

    fn broker_key(self) -> &'static str {
        match self {
            HsmMechanism::AesGcm => KEY,
            HsmMechanism::RsaOaep => RSA_KEY,
            HsmMechanism::SignRsa2048 => SIGN_RSA_KEY,
            HsmMechanism::SignP256 => SIGN_EC_KEY,
        }
    }

    fn grpc_op(self) -> GrpcOp {
        match self {
            HsmMechanism::AesGcm | HsmMechanism::RsaOaep => GrpcOp::WrapThenUnwrap,
            HsmMechanism::SignRsa2048 => GrpcOp::Sign("rsa-pkcs1-sha256"),
            HsmMechanism::SignP256 => GrpcOp::Sign("ecdsa-sha256"),
        }
    }
}

/// The token opened in this process, logged in (the anchor session keeps
/// the login for every other session).
struct DirectToken {
    ctx: Pkcs11,
    slot: cryptoki::slot::Slot,
    key: ObjectHandle,
    rsa_public: ObjectHandle,
    rsa_private: ObjectHandle,
    sign_rsa: ObjectHandle,
    sign_ec: ObjectHandle,
    _anchor: Session,
}

impl DirectToken {
    /// Opens `token` through `module`: SoftHSM itself, or p11-kit's client.
    fn open(token: &SoftHsmToken, module: &std::path::Path) -> Result<DirectToken, Error> {
        let ctx = Pkcs11::new(module)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let slot = ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|slot| {
                ctx.get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == token.label)
            })
            .ok_or_else(|| format!("no token labelled {:?} through {}", token.label, module.display()))?;
        let anchor = ctx.open_ro_session(slot)?;
        anchor.login(UserType::User, Some(&AuthPin::from(token.pin.as_str())))?;
        let find = |class: ObjectClass, label: &str| -> Result<ObjectHandle, Error> {
            let template = [
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            Ok(*anchor
                .find_objects(&template)?
                .first()
                .ok_or_else(|| format!("no {class} labelled {label:?} on the token"))?)
        };
        let key = find(ObjectClass::SECRET_KEY, &token.key_label)?;
        let rsa_public = find(ObjectClass::PUBLIC_KEY, &token.rsa_label)?;
        let rsa_private = find(ObjectClass::PRIVATE_KEY, &token.rsa_label)?;
        let sign_rsa = find(ObjectClass::PRIVATE_KEY, &token.sign_rsa_label)?;
        let sign_ec = find(ObjectClass::PRIVATE_KEY, &token.sign_ec_label)?;
        Ok(DirectToken {
            ctx,
            slot,
            key,
            rsa_public,
            rsa_private,
            sign_rsa,
            sign_ec,
            _anchor: anchor,
        })
    }

    fn callers(&self, threads: usize, mechanism: HsmMechanism) -> Result<Vec<DirectCaller>, Error> {
        (0..threads)
            .map(|i| {
                Ok(DirectCaller {
                    session: self.ctx.open_ro_session(self.slot)?,
                    mechanism,
                    key: self.key,
                    rsa_public: self.rsa_public,
                    rsa_private: self.rsa_private,
                    sign_rsa: self.sign_rsa,
                    sign_ec: self.sign_ec,
                    thread: i as u32,
                    counter: 0,
                })
            })
            .collect()
    }
}

/// One thread's loop: encrypt the DEK, decrypt it, compare.
struct DirectCaller {
    session: Session,
    mechanism: HsmMechanism,
    key: ObjectHandle,
    rsa_public: ObjectHandle,
    rsa_private: ObjectHandle,
    sign_rsa: ObjectHandle,
    sign_ec: ObjectHandle,
    thread: u32,
    counter: u64,
}

impl DirectCaller {
    /// A unique 12-byte IV: thread number and counter (no RNG call in the loop).
    fn next_iv(&mut self) -> [u8; 12] {
        self.counter += 1;
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&self.thread.to_be_bytes());
        iv[4..].copy_from_slice(&self.counter.to_be_bytes());
        iv
    }
}

impl DirectCaller {
    fn rsa_round_trip(&mut self) -> Result<(), String> {
        let params = || {
            PkcsOaepParams::new(
                MechanismType::SHA1,
                PkcsMgfType::MGF1_SHA1,
                PkcsOaepSource::empty(),
            )
        };
        let sealed = self
            .session
            .encrypt(&Mechanism::RsaPkcsOaep(params()), self.rsa_public, &PAYLOAD)
            .map_err(|e| format!("C_Encrypt(RSA-OAEP): {e}"))?;
        let opened = self
            .session
            .decrypt(&Mechanism::RsaPkcsOaep(params()), self.rsa_private, &sealed)
            .map_err(|e| format!("C_Decrypt(RSA-OAEP): {e}"))?;
        if opened != PAYLOAD {
            return Err("C_Decrypt returned a different DEK".into());
        }
        Ok(())
    }
}

impl BlockingCaller for DirectCaller {
    fn call(&mut self) -> Result<(), String> {
        match self.mechanism {
            HsmMechanism::AesGcm => {}
            HsmMechanism::RsaOaep => return self.rsa_round_trip(),
            HsmMechanism::SignRsa2048 => {
                let mut info = SHA256_DIGEST_INFO.to_vec();
                info.extend_from_slice(&DIGEST);
                let signature = self
                    .session
                    .sign(&Mechanism::RsaPkcs, self.sign_rsa, &info)
                    .map_err(|e| format!("C_Sign(RSA_PKCS): {e}"))?;
                return check_signature_len(&signature, 256);
            }
            HsmMechanism::SignP256 => {
                let signature = self
                    .session
                    .sign(&Mechanism::Ecdsa, self.sign_ec, &DIGEST)
                    .map_err(|e| format!("C_Sign(ECDSA): {e}"))?;
                return check_signature_len(&signature, 64);
            }
        }
        let iv = self.next_iv();
        let mut enc_iv = iv;
        let params = GcmParams::new(&mut enc_iv, DIRECT_AAD, 128.into()).map_err(|e| e.to_string())?;
        let sealed = self
            .session
            .encrypt(&Mechanism::AesGcm(params), self.key, &PAYLOAD)
            .map_err(|e| format!("C_Encrypt: {e}"))?;
        let mut dec_iv = iv;
        let params = GcmParams::new(&mut dec_iv, DIRECT_AAD, 128.into()).map_err(|e| e.to_string())?;
        let opened = self
            .session
            .decrypt(&Mechanism::AesGcm(params), self.key, &sealed)
            .map_err(|e| format!("C_Decrypt: {e}"))?;
        if opened != PAYLOAD {
            return Err("C_Decrypt returned a different DEK".into());
        }
        Ok(())
    }
}

/// A raw signature is exactly as long as the key says (RSA modulus; ECDSA r||s).
fn check_signature_len(signature: &[u8], len: usize) -> Result<(), String> {
    if signature.len() != len {
        return Err(format!("C_Sign returned {} bytes, not {len}", signature.len()));
    }
    Ok(())
}

/// The rows, and the comparisons a peer cannot make (with why).
pub async fn run(ctx: &Ctx) -> Result<(Vec<ComparisonRow>, Vec<String>), Error> {
    let token = SoftHsmToken::create_or_reuse(&ctx.make_token_script, &ctx.softhsm_module, &ctx.hsm_dir)?;
    // Open the token here first, then start the broker: SoftHSM2 reads its
    // file store at C_Initialize and C_Login, and a concurrent first access
    // by the daemon can fail them spuriously, so also retry a few times.
    let mut attempt = 0;
    let direct = loop {
        attempt += 1;
        let opened = tokio::task::spawn_blocking({
            let token = token.clone();
            move || DirectToken::open(&token, &token.module).map_err(|e| e.to_string())
        })
        .await?;
        match opened {
            Ok(direct) => break direct,
            Err(e) if attempt < 5 => {
                eprintln!("hsm: opening the token directly failed ({e}); retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // p11-kit's server in its own process, and this process's view of the
    // token through its client module.
    let p11kit = if ctx.hsm_peers.contains(&HsmPeer::P11Kit) {
        let server = P11KitServer::start(
            &ctx.p11kit_bin,
            &token,
            &ctx.p11kit_socket,
            &ctx.dir.join("p11-kit-server.log"),
        )
        .await?;
        let client = tokio::task::spawn_blocking({
            let token = token.clone();
            let module = ctx.p11kit_client.clone();
            move || DirectToken::open(&token, &module).map_err(|e| e.to_string())
        })
        .await??;
        // The client first, so it finalizes while its server still answers.
        Some((client, server))
    } else {
        None
    };
    // A mechanism the peer's door cannot carry is a note, not errors: p11-kit
    // 0.24's RPC forwards no CK_GCM_PARAMS and answers CKR_MECHANISM_INVALID.
    let mut notes = Vec::new();
    let mut unsupported = Vec::new();
    if let Some((client, _)) = &p11kit {
        for &mechanism in &ctx.hsm_mechanisms {
            let mut probe = client.callers(1, mechanism)?;
            let outcome = tokio::task::spawn_blocking(move || probe[0].call()).await?;
            if let Err(e) = outcome
                && e.contains("invalid mechanism")
            {
                notes.push(format!(
                    "p11-kit remoting cannot carry {} ({}): {e}",
                    mechanism.name(),
                    ctx.p11kit_client.display()
                ));
                unsupported.push(mechanism);
            }
        }
    }
    let max_threads = ctx.hsm_threads.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    // One broker per `dispatch` setting, each compared with the same peers.
    for &dispatch in &ctx.hsm_dispatch {
        let dir = ctx.dir.join(format!("hsm-broker-{dispatch}"));
        // Enough pooled sessions that the pool never queues a caller the direct loop would not.
        let config = ctx.hsm_config(&dir, &token, max_threads.max(8), dispatch)?;
        let broker = ctx
            .start_broker(&dir, &config, &[("SOFTHSM2_CONF", &token.conf)])
            .await?;
        for &mechanism in &ctx.hsm_mechanisms {
            let name = format!("sealbroker gRPC ({}, {dispatch})", mechanism.name());
            for &threads in &ctx.hsm_threads {
                for &peer in &ctx.hsm_peers {
                    let peer_token = match (peer, &p11kit) {
                        (HsmPeer::Direct, _) => &direct,
                        (HsmPeer::P11Kit, Some((client, _))) if !unsupported.contains(&mechanism) => client,
                        (HsmPeer::P11Kit, _) => continue,
                    };
                    let peer_name = format!("{} ({})", peer.name(), mechanism.name());
                    let callers = ctx
                        .grpc_callers(&broker.socket, threads, mechanism.grpc_op())
                        .await?;
                    let key = mechanism.broker_key();
                    let mut a = AsyncSide(callers.into_iter().map(|c| c.with_key(key)).collect());
                    let mut b = BlockingSide(peer_token.callers(threads, mechanism)?);
                    let before = loadavg();
                    let compared = compare(&mut a, &mut b, ctx.plan).await;
                    let row =
                        ComparisonRow::new(threads, (&name, &peer_name), compared, peer.target(), before);
                    eprintln!(
                        "hsm      {:<13} {dispatch:<7} t={threads:<3} sealbroker {:>8.0} ops/s  {:<16} {:>8.0} ops/s  ratio {:.2}x",
                        mechanism.name(),
                        row.a.ops_per_sec,
                        peer.name(),
                        row.b.ops_per_sec,
                        row.ratio
                    );
                    rows.push(row);
                }
            }
        }
        drop(broker);
    }
    drop(p11kit);
    Ok((rows, notes))
}
