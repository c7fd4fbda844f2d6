//! The `[web]` section. Placeholder until the web role defines its keys.

use serde::Deserialize;

use super::Ctx;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {}

#[derive(Debug, Clone)]
pub struct WebConfig {}

impl WebConfig {
    pub fn validate(_raw: &RawWeb, _ctx: &mut Ctx) -> Option<WebConfig> {
        Some(WebConfig {})
    }
}
