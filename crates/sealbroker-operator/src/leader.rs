//! Leader election for the controller, on a `coordination.k8s.io/v1`
//! Lease, so it can run as several replicas with exactly one reconciling.
//!
//! The rules are those of client-go's leader election: the holder renews
//! `renewTime` every [`Election::renew_every`]; anyone may take a Lease
//! that is absent, has no holder, or was not renewed for
//! `leaseDurationSeconds`; every write carries the `resourceVersion` it
//! read, so of two replicas taking the same expired Lease the API server
//! lets one win (the other gets 409 Conflict). A leader that cannot renew
//! for a whole lease duration stops, and its process exits, so it never
//! reconciles beside a new leader for longer than that.
//!
//! [`claim`] is the pure decision; [`try_acquire`] is one round against the
//! API; [`lead`] runs the controller while the Lease is held.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// The Lease the controller replicas share, in the operator's namespace.
pub const LEASE_NAME: &str = "sealbroker-operator";

/// Who runs for leader, where, and how often.
#[derive(Clone, Debug)]
pub struct Election {
    /// This replica (its Pod name).
    pub identity: String,
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// How long a Lease not renewed stays the holder's.
    pub lease_duration: Duration,
    /// How often the holder renews, and others look again.
    pub renew_every: Duration,
}

impl Election {
    /// client-go's defaults: 15 s leases, renewed every 5 s (it retries
    /// every 2 s; a third of the lease keeps two renewals in hand).
    pub fn new(identity: impl Into<String>, namespace: impl Into<String>) -> Self {
        Election {
            identity: identity.into(),
            namespace: namespace.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What the Lease lets this replica do.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Take or renew it: write it with us as holder. `acquired` is when we
    /// became holder (kept on renewals), `transitions` its new count.
    Take { acquired: Timestamp, transitions: i32 },
    /// Another replica holds it until `expires`.
    Held { holder: String, expires: Timestamp },
}

/// The decision for `me` at `now`, given the Lease as read.
pub fn claim(lease: Option<&Lease>, me: &str, now: Timestamp, default_duration: Duration) -> Claim {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Claim::Take {
            acquired: now,
            transitions: 0,
        };
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Claim::Take {
            acquired: spec.acquire_time.as_ref().map_or(now, |t| t.0),
            transitions,
        };
    }
    let seconds = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(default_duration.as_secs() as i64, i64::from);
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let expires = renewed.map(|t| t + SignedDuration::from_secs(seconds));
    match expires {
        Some(expires) if !holder.is_empty() && expires > now => Claim::Held { holder, expires },
        _ => Claim::Take {
            acquired: now,
            transitions: transitions + 1,
        },
    }
}

/// The Lease with `me` as holder, carrying `read`'s resourceVersion.
pub fn held_by(me: &str, election: &Election, now: Timestamp, claim: &Claim, read: Option<&Lease>) -> Lease {
    let (acquired, transitions) = match claim {
        Claim::Take {
            acquired,
            transitions,
        } => (*acquired, *transitions),
        Claim::Held { .. } => (now, 0),
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            namespace: Some(election.namespace.clone()),
            resource_version: read.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.into()),
            lease_duration_seconds: Some(election.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// One round: reads the Lease and takes or renews it when [`claim`] allows.
/// `Ok(true)` when this replica holds it now; `Ok(false)` when another does,
/// or won the race for it (409 Conflict).
pub async fn try_acquire(api: &Api<Lease>, election: &Election, now: Timestamp) -> Result<bool, kube::Error> {
    let read = api.get_opt(LEASE_NAME).await?;
    let decision = claim(read.as_ref(), &election.identity, now, election.lease_duration);
    if let Claim::Held { holder, expires } = &decision {
        tracing::debug!(%holder, %expires, "the controller Lease is held by another replica");
        return Ok(false);
    }
    let lease = held_by(&election.identity, election, now, &decision, read.as_ref());
    let written = match read {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => api.replace(LEASE_NAME, &PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why [`lead`] returned before it was asked to stop.
#[derive(Debug, PartialEq, Eq)]
pub struct LostLease(pub String);

/// Waits until this replica holds the Lease, then runs `work` while renewing
/// it. Returns `Ok` once `stop` completes (during the wait or the work), and
/// `Err` when the Lease is lost (another replica took it, or it could not be
/// renewed for a whole lease duration): `work` is dropped then, and the
/// caller exits so the process restarts as a candidate.
pub async fn lead<W, S>(
    api: Api<Lease>,
    election: Election,
    now: impl Fn() -> Timestamp,
    work: W,
    stop: S,
) -> Result<(), LostLease>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    tokio::pin!(stop);
    // Candidate.
    loop {
        match try_acquire(&api, &election, now()).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read or write the controller Lease; trying again"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(election.renew_every) => {}
        }
    }
    tracing::info!(identity = %election.identity, "leading: this replica reconciles");
    // Leader.
    tokio::pin!(work);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = &mut work => return Ok(()),
            _ = tokio::time::sleep(election.renew_every) => {}
        }
        match try_acquire(&api, &election, now()).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => return Err(LostLease("another replica holds the controller Lease".into())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the controller Lease");
                if last_renewed.elapsed() >= election.lease_duration {
                    return Err(LostLease(format!(
                        "the controller Lease was not renewed for {:?} (last error: {e})",
                        election.lease_duration
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some("41".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                acquire_time: Some(MicroTime(at("2026-01-01T00:00:00Z"))),
                renew_time: Some(MicroTime(at(renewed))),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn an_absent_lease_is_taken() {
        let now = at("2026-01-01T00:01:00Z");
        assert_eq!(
            claim(None, "a", now, D),
            Claim::Take {
                acquired: now,
                transitions: 0
            }
        );
    }

    #[test]
    fn another_holders_fresh_lease_is_left_until_it_expires() {
        let l = lease(Some("b"), "2026-01-01T00:01:00Z", 3);
        assert_eq!(
            claim(Some(&l), "a", at("2026-01-01T00:01:14Z"), D),
            Claim::Held {
                holder: "b".into(),
                expires: at("2026-01-01T00:01:15Z")
            }
        );
        let now = at("2026-01-01T00:01:15Z");
        assert_eq!(
            claim(Some(&l), "a", now, D),
            Claim::Take {
                acquired: now,
                transitions: 4
            }
        );
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time_and_count() {
        let l = lease(Some("a"), "2026-01-01T00:01:00Z", 3);
        assert_eq!(
            claim(Some(&l), "a", at("2026-01-01T00:09:00Z"), D),
            Claim::Take {
                acquired: at("2026-01-01T00:00:00Z"),
                transitions: 3
            }
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let l = lease(None, "2026-01-01T00:01:00Z", 3);
        let now = at("2026-01-01T00:01:01Z");
        assert_eq!(
            claim(Some(&l), "a", now, D),
            Claim::Take {
                acquired: now,
                transitions: 4
            }
        );
    }

    #[test]
    fn the_written_lease_names_us_and_carries_the_version_read() {
        let election = Election::new("a", "sealbroker-system");
        let read = lease(Some("b"), "2026-01-01T00:01:00Z", 3);
        let now = at("2026-01-01T00:02:00Z");
        let decision = claim(Some(&read), "a", now, D);
        let written = held_by("a", &election, now, &decision, Some(&read));
        assert_eq!(written.metadata.resource_version.as_deref(), Some("41"));
        let spec = written.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }
}
