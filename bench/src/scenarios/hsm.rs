//! Scenario 2: Wrap+Unwrap of a 32-byte DEK on SoftHSM2 through the broker's
//! gRPC unix socket, against a direct cryptoki loop that encrypts and
//! decrypts the DEK on the same token key with the same number of threads,
//! one session per thread. The ratio is the share of the raw HSM throughput
//! the broker keeps.
//!
//! Two mechanisms: AES-GCM, which SoftHSM does in microseconds (so the
//! comparison is mostly the broker's IPC against a function call), and
//! RSA-OAEP-3072, whose private-key decrypt takes a millisecond or two, as
//! an HSM call typically does.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::{ComparisonRow, Ctx, GrpcOp, KEY, PAYLOAD, RSA_KEY, loadavg};
use crate::load::{AsyncSide, BlockingCaller, BlockingSide, compare};
use crate::peers::{Error, SoftHsmToken};

/// Goal: the broker keeps at least this share of the direct loop's ops/s.
pub const TARGET_RATIO: f64 = 0.9;

/// The AAD of the direct loop; about as long as the broker's (key name and version).
const DIRECT_AAD: &[u8] = b"sealbroker-bench/bench/v1";

/// The token mechanism both sides use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HsmMechanism {
    /// AES-256-GCM on the token's secret key.
    AesGcm,
    /// RSA-OAEP (SHA-1, all SoftHSM 2.6 supports) on a 3072-bit pair.
    RsaOaep,
}

impl HsmMechanism {
    fn name(self) -> &'static str {
        match self {
            HsmMechanism::AesGcm => "AES-GCM",
            HsmMechanism::RsaOaep => "RSA-OAEP-3072",
        }
    }

    fn broker_key(self) -> &'static str {
        match self {
            HsmMechanism::AesGcm => KEY,
            HsmMechanism::RsaOaep => RSA_KEY,
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
    _anchor: Session,
}

impl DirectToken {
    fn open(token: &SoftHsmToken) -> Result<DirectToken, Error> {
        let ctx = Pkcs11::new(&token.module)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let slot = ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|slot| {
                ctx.get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == token.label)
            })
            .ok_or_else(|| format!("no SoftHSM token labelled {:?} in this process", token.label))?;
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
        Ok(DirectToken {
            ctx,
            slot,
            key,
            rsa_public,
            rsa_private,
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
        if self.mechanism == HsmMechanism::RsaOaep {
            return self.rsa_round_trip();
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

pub async fn run(ctx: &Ctx) -> Result<Vec<ComparisonRow>, Error> {
    let token = SoftHsmToken::create_or_reuse(&ctx.make_token_script, &ctx.softhsm_module, &ctx.hsm_dir)?;
    // Open the token here first, then start the broker: SoftHSM2 reads its
    // file store at C_Initialize and C_Login, and a concurrent first access
    // by the daemon can fail them spuriously, so also retry a few times.
    let mut attempt = 0;
    let direct = loop {
        attempt += 1;
        let opened = tokio::task::spawn_blocking({
            let token = token.clone();
            move || DirectToken::open(&token).map_err(|e| e.to_string())
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
    let max_threads = ctx.hsm_threads.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    // One broker per `dispatch` setting, each compared with the same direct loop.
    for &dispatch in &ctx.hsm_dispatch {
        let dir = ctx.dir.join(format!("hsm-broker-{dispatch}"));
        // Enough pooled sessions that the pool never queues a caller the direct loop would not.
        let config = ctx.hsm_config(&dir, &token, max_threads.max(8), dispatch)?;
        let broker = ctx
            .start_broker(&dir, &config, &[("SOFTHSM2_CONF", &token.conf)])
            .await?;
        for &mechanism in &ctx.hsm_mechanisms {
            let name = format!("sealbroker gRPC ({}, dispatch = {dispatch})", mechanism.name());
            let direct_name = format!("direct cryptoki ({})", mechanism.name());
            for &threads in &ctx.hsm_threads {
                let callers = ctx.grpc_callers(&broker, threads, GrpcOp::WrapThenUnwrap).await?;
                let key = mechanism.broker_key();
                let mut a = AsyncSide(callers.into_iter().map(|c| c.with_key(key)).collect());
                let mut b = BlockingSide(direct.callers(threads, mechanism)?);
                let before = loadavg();
                let compared = compare(&mut a, &mut b, ctx.plan).await;
                let row = ComparisonRow::new(threads, (&name, &direct_name), compared, TARGET_RATIO, before);
                eprintln!(
                    "hsm      {:<13} {dispatch:<6} t={threads:<3} sealbroker {:>8.0} ops/s  direct {:>8.0} ops/s  ratio {:.2}x",
                    mechanism.name(),
                    row.a.ops_per_sec,
                    row.b.ops_per_sec,
                    row.ratio
                );
                rows.push(row);
            }
        }
        drop(broker);
    }
    Ok(rows)
}
