//! The `[storage]` section. Placeholder until the storage role defines its keys.

use serde::Deserialize;

use super::Ctx;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {}

#[derive(Debug, Clone)]
pub struct StorageConfig {}

impl StorageConfig {
    pub fn validate(_raw: &RawStorage, _ctx: &mut Ctx) -> Option<StorageConfig> {
        Some(StorageConfig {})
    }
}
