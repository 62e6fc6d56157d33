//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the
//! holder renews `renewTime`; another replica takes the Lease over only after
//! `leaseDurationSeconds` without a renewal. Every write carries the resourceVersion
//! it read, so two replicas racing for an expired Lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use teal_core::rollout::Millis;

use crate::Error;

/// One replica's claim on a Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn micro_time(at: Millis) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(at as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl LeaseLock {
    /// A claim on Lease `name` in `namespace` as `identity`, held for `duration` after
    /// each renewal.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// How long a claim lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes the Lease if it is free or expired, renews it if held; true when this
    /// replica leads afterwards.
    pub async fn try_acquire_or_renew(&self, now: Millis) -> Result<bool, Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(error) if is_conflict(&error) => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec
            .renew_time
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond().max(0) as Millis);
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        let expired = renewed + held_for.as_millis() as Millis <= now;
        let next = if holder == self.identity {
            let acquired = spec
                .acquire_time
                .as_ref()
                .map_or(now, |t| t.0.as_millisecond().max(0) as Millis);
            self.spec(acquired, now, spec.lease_transitions.unwrap_or(0))
        } else if holder.is_empty() || expired {
            self.spec(now, now, spec.lease_transitions.unwrap_or(0) + 1)
        } else {
            return Ok(false);
        };
        let mut updated = lease;
        updated.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the Lease up so another replica takes over at once (on shutdown).
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn spec(&self, acquired: Millis, renewed: Millis, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(micro_time(acquired)),
            renew_time: Some(micro_time(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}
