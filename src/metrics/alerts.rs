//! Alert delivery metrics: the outbox's depth and what became of each message.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct AlertMetrics {
    outbox: Gauge,
    sent: Counter,
    failed: Counter,
    dead: Counter,
}

impl AlertMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register("nfsguard_alert_outbox_messages", "Alert messages waiting in the outbox", self.outbox.clone());
        r.register("nfsguard_alerts_sent", "Alert messages accepted by the mail server", self.sent.clone());
        r.register("nfsguard_alert_send_failures", "Delivery attempts that failed (retried)", self.failed.clone());
        r.register("nfsguard_alerts_dead", "Alert messages no recipient took (moved to dead/)", self.dead.clone());
    }

    pub fn outbox(&self, messages: usize) {
        self.outbox.set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub fn sent(&self) {
        self.sent.inc();
    }

    pub fn failed(&self) {
        self.failed.inc();
    }

    pub fn dead(&self) {
        self.dead.inc();
    }
}
