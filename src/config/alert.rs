//! The `[alert]` section. Placeholder until the alert role defines its keys.

use serde::Deserialize;

use super::Ctx;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {}

#[derive(Debug, Clone)]
pub struct AlertConfig {}

impl AlertConfig {
    pub fn validate(_raw: &RawAlert, _ctx: &mut Ctx) -> Option<AlertConfig> {
        Some(AlertConfig {})
    }
}
