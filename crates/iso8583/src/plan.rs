//! Layout plans: the decoder's field walk worked out once per bitmap.
//!
//! Terminals send a handful of message shapes, each with the same bitmap every time. For a
//! given bitmap the fixed fields between two variable ones always sit at the same offsets
//! from each other, so a plan lists the walk's steps with each run of adjacent fixed fields
//! (sharing one content check) merged into one block: one bounds check, one check-run
//! decision and a store per field, where the generic walk looked each field up and decided
//! each one on its own. The bench message's 19 fields become 8 steps.
//!
//! A spec keeps up to [`SLOTS`] plans, one per slot chosen by the bitmap's hash, each set
//! once (a `OnceLock`, so threads share them without locks) after a message with that bitmap
//! decoded cleanly. A bitmap whose slot holds another one's plan takes the generic walk:
//! slower, never wrong. A plan is only a faster way to the same answer: any problem it meets
//! sends the decoder back to the generic walk, which names the field, offset and reason.

use std::sync::OnceLock;

use crate::spec::{FastCheck, FieldSpec};

/// Plans kept per spec.
pub(crate) const SLOTS: usize = 32;
/// Most steps a plan holds; a message with more takes the generic walk.
const MAX_STEPS: usize = 48;
/// Most fixed fields a plan's blocks hold, all blocks together.
const MAX_BLOCK_FIELDS: usize = 96;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// One field, placed and checked as the generic walk does (variable fields, and fixed
    /// ones whose content is checked field by field).
    Field(u8),
    /// Adjacent fixed fields sharing one content check: `count` entries of the plan's
    /// block tables from `first`, `bytes` long together.
    Block {
        first: u8,
        count: u8,
        bytes: u16,
        check: FastCheck,
    },
}

/// The walk for one bitmap.
#[derive(Debug)]
pub(crate) struct Plan {
    bitmap: [u64; 3],
    steps: [Step; MAX_STEPS],
    step_count: u8,
    /// Field numbers of the blocks' fields, block by block.
    block_fields: [u8; MAX_BLOCK_FIELDS],
    /// Each block field's offset from its block's start.
    block_offsets: [u16; MAX_BLOCK_FIELDS],
}

impl Plan {
    /// The plan for `bitmap` (its indicator bits included), or `None` when the message has
    /// more steps or block fields than a plan holds, or a field the spec does not define.
    pub(crate) fn build(
        table: &[FieldSpec; 193],
        bitmap: [u64; 3],
        tertiary: bool,
    ) -> Option<Plan> {
        let mut plan = Plan {
            bitmap,
            steps: [Step::Field(0); MAX_STEPS],
            step_count: 0,
            block_fields: [0; MAX_BLOCK_FIELDS],
            block_offsets: [0; MAX_BLOCK_FIELDS],
        };
        let (mut steps, mut fields) = (0usize, 0usize);
        let indicator = |n: usize| n == 1 || (n == 65 && tertiary);
        let present = |n: usize| bitmap[(n - 1) / 64] >> (63 - (n - 1) % 64) & 1 == 1;
        for n in (1..=192usize).filter(|&n| present(n) && !indicator(n)) {
            let f = &table[n];
            if !f.defined {
                return None;
            }
            let blockable = f.prefix_bytes == 0 && f.fast != FastCheck::PerField;
            // Join the open block when this field has its check; else start a step.
            let joined = match steps.checked_sub(1).map(|s| &mut plan.steps[s]) {
                Some(Step::Block {
                    count,
                    bytes,
                    check,
                    ..
                }) if blockable && *check == f.fast => {
                    *plan.block_offsets.get_mut(fields)? = *bytes;
                    *count += 1;
                    *bytes = bytes.checked_add(f.fixed_bytes)?;
                    true
                }
                _ => false,
            };
            if !joined {
                *plan.steps.get_mut(steps)? = if blockable {
                    *plan.block_offsets.get_mut(fields)? = 0;
                    Step::Block {
                        first: fields as u8,
                        count: 1,
                        bytes: f.fixed_bytes,
                        check: f.fast,
                    }
                } else {
                    Step::Field(n as u8)
                };
                steps += 1;
            }
            if blockable {
                *plan.block_fields.get_mut(fields)? = n as u8;
                fields += 1;
            }
        }
        plan.step_count = steps as u8;
        Some(plan)
    }

    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps[..usize::from(self.step_count)]
    }

    /// The fields of a block: numbers and offsets from the block's start.
    #[inline(always)]
    pub(crate) fn block(&self, first: u8, count: u8) -> (&[u8], &[u16]) {
        let range = usize::from(first)..usize::from(first) + usize::from(count);
        (
            self.block_fields.get(range.clone()).unwrap_or_default(),
            self.block_offsets.get(range).unwrap_or_default(),
        )
    }
}

/// A spec's plans, by slot.
pub(crate) struct Plans(Box<[OnceLock<Plan>; SLOTS]>);

impl Plans {
    pub(crate) fn new() -> Plans {
        Plans(Box::new(std::array::from_fn(|_| OnceLock::new())))
    }

    fn slot(&self, bitmap: &[u64; 3]) -> &OnceLock<Plan> {
        let mixed = (bitmap[0] ^ bitmap[1].rotate_left(21) ^ bitmap[2].rotate_left(42))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.0[(mixed >> 59) as usize % SLOTS]
    }

    /// The plan for `bitmap`, if one has been made.
    #[inline]
    pub(crate) fn get(&self, bitmap: &[u64; 3]) -> Option<&Plan> {
        // Compared word by word: as one array the compare loaded the caller's bitmap as a
        // vector, just after it was stored as words, and stalled store forwarding.
        let same = |p: &Plan| {
            (p.bitmap[0] ^ bitmap[0]) | (p.bitmap[1] ^ bitmap[1]) | (p.bitmap[2] ^ bitmap[2]) == 0
        };
        self.slot(bitmap).get().filter(|p| same(p))
    }

    /// Make the plan for `bitmap` if its slot is free (after a clean decode of a message
    /// with that bitmap, so the slots go to shapes that decode).
    pub(crate) fn learn(&self, table: &[FieldSpec; 193], bitmap: [u64; 3], tertiary: bool) {
        let slot = self.slot(&bitmap);
        if slot.get().is_none() {
            if let Some(plan) = Plan::build(table, bitmap, tertiary) {
                let _ = slot.set(plan);
            }
        }
    }

    /// How many slots hold a plan.
    pub(crate) fn len(&self) -> usize {
        self.0.iter().filter(|s| s.get().is_some()).count()
    }
}

impl Clone for Plans {
    /// A copy of a spec starts with no plans; it learns its own.
    fn clone(&self) -> Plans {
        Plans::new()
    }
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} layout plans", self.len())
    }
}
