//! stub — being written
#[doc(hidden)]
pub mod __private {
    //! Macro plumbing for `#[derive(Entity)]` (semver-exempt).
    pub use larder_core::__private::{LazyLock, serde_json};
    pub use larder_core::entity::mapping_error;
    pub use larder_core::{
        Entity, EntityDef, FieldDef, FieldType, FieldValue, Record, Result, Storage, Value,
        decode_body,
    };
}
#[cfg(feature = "derive")]
pub use larder_derive::Entity;
pub use larder_core::*;
