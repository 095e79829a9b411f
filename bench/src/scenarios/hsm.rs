//! Scenario 2: Wrap+Unwrap of a 32-byte DEK on SoftHSM2 through the broker's
//! gRPC unix socket, against a direct cryptoki loop that does AES-GCM
//! encrypt+decrypt of the DEK on the same token key with the same number of
//! threads, one session per thread. The ratio is the share of the raw HSM
//! throughput the broker keeps.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::{ComparisonRow, Ctx, GrpcOp, PAYLOAD, loadavg};
use crate::load::{AsyncSide, BlockingCaller, BlockingSide, compare};
use crate::peers::{Broker, Error, SoftHsmToken};

/// Goal: the broker keeps at least this share of the direct loop's ops/s.
pub const TARGET_RATIO: f64 = 0.9;

/// The AAD of the direct loop; about as long as the broker's (key name and version).
const DIRECT_AAD: &[u8] = b"sealbroker-bench/bench/v1";

/// The token opened in this process, logged in (the anchor session keeps
/// the login for every other session).
struct DirectToken {
    ctx: Pkcs11,
    slot: cryptoki::slot::Slot,
    key: ObjectHandle,
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
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(token.key_label.as_bytes().to_vec()),
        ];
        let key = *anchor
            .find_objects(&template)?
            .first()
            .ok_or_else(|| format!("no key labelled {:?} on the token", token.key_label))?;
        Ok(DirectToken {
            ctx,
            slot,
            key,
            _anchor: anchor,
        })
    }

    fn callers(&self, threads: usize) -> Result<Vec<DirectCaller>, Error> {
        (0..threads)
            .map(|i| {
                Ok(DirectCaller {
                    session: self.ctx.open_ro_session(self.slot)?,
                    key: self.key,
                    thread: i as u32,
                    counter: 0,
                })
            })
            .collect()
    }
}

/// One thread's loop: AES-GCM encrypt of the DEK, decrypt, compare.
struct DirectCaller {
    session: Session,
    key: ObjectHandle,
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

impl BlockingCaller for DirectCaller {
    fn call(&mut self) -> Result<(), String> {
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
    let dir = ctx.dir.join("hsm-broker");
    let max_threads = ctx.hsm_threads.iter().copied().max().unwrap_or(1);
    // Enough pooled sessions that the pool never queues a caller the direct loop would not.
    let config = ctx.hsm_config(&dir, &token, max_threads.max(8))?;
    let broker = Broker::start(
        &ctx.sealbroker_bin,
        &config,
        &dir.join("sb.sock"),
        &[("SOFTHSM2_CONF", &token.conf)],
        &dir.join("sealbroker.log"),
    )
    .await?;

    let mut rows = Vec::new();
    for &threads in &ctx.hsm_threads {
        let mut a = AsyncSide(ctx.grpc_callers(&broker, threads, GrpcOp::WrapThenUnwrap).await?);
        let mut b = BlockingSide(direct.callers(threads)?);
        let before = loadavg();
        let compared = compare(&mut a, &mut b, ctx.plan).await;
        let row = ComparisonRow::new(
            threads,
            ("sealbroker gRPC (SoftHSM)", "direct cryptoki"),
            compared,
            TARGET_RATIO,
            before,
        );
        eprintln!(
            "hsm      t={threads:<3} sealbroker {:>9.0} ops/s  direct {:>9.0} ops/s  ratio {:.2}x",
            row.a.ops_per_sec, row.b.ops_per_sec, row.ratio
        );
        rows.push(row);
    }
    drop(broker);
    Ok(rows)
}
