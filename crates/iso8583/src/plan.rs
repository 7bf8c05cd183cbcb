//! Layout plans: the decoder's field walk worked out once per bitmap.
//!
//! Terminals send a handful of message shapes, each with the same bitmap every time. For a
//! given bitmap the fixed fields between two variable ones always sit at the same offsets
//! from each other, so a plan lists the walk's steps with each run of adjacent fixed fields
//! (sharing one content check) merged into one block: one bounds check, one check-run
//! decision and one store per block, where the generic walk looked each field up, decided
//! each one on its own and stored where it starts. The bench message's 19 fields become 8
//! steps. A view decoded by a plan keeps where each step starts, and finds a field's start
//! from its step's and its offset in the step (both in the plan).
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
pub(crate) const MAX_STEPS: usize = 48;

/// Where each step of a plan's walk starts in one frame (a block's first field's data, a
/// field's data after its length prefix).
pub(crate) type StepStarts = [u16; MAX_STEPS];

#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// One field, placed and checked as the generic walk does (variable fields, and fixed
    /// ones whose content is checked field by field).
    Field(u8),
    /// Adjacent fixed fields sharing one content check, `bytes` long together.
    Block { bytes: u16, check: FastCheck },
}

/// The walk for one bitmap.
#[derive(Debug)]
pub(crate) struct Plan {
    bitmap: [u64; 3],
    steps: [Step; MAX_STEPS],
    step_count: u8,
    /// For each field of the bitmap: its step, and its data's offset from the step's start.
    field_step: [u8; 193],
    field_offset: [u16; 193],
}

impl Plan {
    /// The plan for `bitmap` (its indicator bits included), or `None` when the message has
    /// more steps than a plan holds, or a field the spec does not define.
    pub(crate) fn build(
        table: &[FieldSpec; 193],
        bitmap: [u64; 3],
        tertiary: bool,
    ) -> Option<Plan> {
        let mut plan = Plan {
            bitmap,
            steps: [Step::Field(0); MAX_STEPS],
            step_count: 0,
            field_step: [0; 193],
            field_offset: [0; 193],
        };
        let mut steps = 0usize;
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
                Some(Step::Block { bytes, check }) if blockable && *check == f.fast => {
                    plan.field_offset[n] = *bytes;
                    *bytes = bytes.checked_add(f.fixed_bytes)?;
                    true
                }
                _ => false,
            };
            if !joined {
                *plan.steps.get_mut(steps)? = if blockable {
                    Step::Block {
                        bytes: f.fixed_bytes,
                        check: f.fast,
                    }
                } else {
                    Step::Field(n as u8)
                };
                steps += 1;
            }
            plan.field_step[n] = (steps - 1) as u8;
        }
        plan.step_count = steps as u8;
        Some(plan)
    }

    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps[..usize::from(self.step_count)]
    }

    /// Where field `n` (one of this plan's bitmap) starts, given where its frame's steps
    /// start.
    #[inline]
    pub(crate) fn start_of(&self, starts: &StepStarts, n: usize) -> usize {
        let step = usize::from(self.field_step[n]);
        usize::from(starts[step]) + usize::from(self.field_offset[n])
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
