//! The dialects shipped in `specs/`, compiled into the binary so that they work from any
//! directory.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::spec::Spec;

/// `(name, TOML text)` of every shipped spec.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "iso8583-1987-ascii",
        include_str!("../../../specs/iso8583-1987-ascii.toml"),
    ),
    (
        "iso8583-1987-binary-bitmap",
        include_str!("../../../specs/iso8583-1987-binary-bitmap.toml"),
    ),
    (
        "iso8583-1987-bcd",
        include_str!("../../../specs/iso8583-1987-bcd.toml"),
    ),
    (
        "iso8583-1993-ascii",
        include_str!("../../../specs/iso8583-1993-ascii.toml"),
    ),
];

static LOADED: [OnceLock<Result<Spec>>; 4] = [const { OnceLock::new() }; 4];

/// A shipped spec by name, parsed once and kept for the life of the process.
pub fn shipped(name: &str) -> Result<&'static Spec> {
    let index = SHIPPED
        .iter()
        .position(|(n, _)| *n == name)
        .ok_or_else(|| Error::Spec {
            spec: name.to_string(),
            problems: vec![format!(
                "no shipped spec of that name (shipped: {})",
                SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )],
        })?;
    let (name, text) = SHIPPED[index];
    LOADED[index]
        .get_or_init(|| Spec::from_toml(name, text))
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_spec_loads_and_is_named_after_its_file() {
        for (name, _) in SHIPPED {
            let spec = shipped(name).unwrap();
            assert_eq!(spec.name(), *name);
            for n in [2u8, 3, 4, 11, 39, 41] {
                assert!(spec.field(n).is_some(), "{name} lacks field {n}");
            }
        }
        assert!(shipped("nope").is_err());
    }
}
