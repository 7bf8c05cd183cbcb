//! Which bytes a message authentication code covers, the same for every dialect.
//!
//! The MAC field is the message's last field: 128 when the secondary bitmap is present,
//! else 64. The MAC covers the message as it is on the wire (the dialect's encoding) from
//! the first byte of the MTI to the byte before the MAC field's data, with the MAC field's
//! bitmap bit set; the framing (length prefix, TPDU or other header) is not part of it. A
//! message with a MAC in field 64 and fields after it is refused: those fields would not be
//! covered.

use crate::builder::MessageBuilder;
use crate::view::MessageView;

/// The MAC field of `view` when it carries one (`Err` when its MAC is not its last field).
pub fn mac_field_of(view: &MessageView<'_>) -> Result<Option<u8>, &'static str> {
    let secondary = view.bitmaps()[1] != 0;
    let field = if secondary { 128 } else { 64 };
    if view.has(field) {
        Ok(Some(field))
    } else if secondary && view.has(64) {
        Err("a MAC in field 64 with fields after it")
    } else {
        Ok(None)
    }
}

/// The bytes a MAC in field `mac_field` of `view` covers.
pub fn mac_input<'v>(view: &'v MessageView<'_>, mac_field: u8) -> Option<&'v [u8]> {
    let range = view.range(mac_field)?;
    view.buffer().get(..range.start)
}

/// The field a MAC of `builder`'s message goes in.
pub fn mac_field_for(builder: &MessageBuilder<'_>) -> u8 {
    if (65..=127).any(|n| builder.has(n)) {
        128
    } else {
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{shipped, Mti};

    #[test]
    fn the_mac_covers_the_message_up_to_its_last_field() {
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        b.set(3, "000000").unwrap().set(11, "000001").unwrap();
        assert_eq!(mac_field_for(&b), 64);
        b.set(64, [0xAB; 8]).unwrap();
        let view = MessageView::decode(spec, b.encode()).unwrap();
        assert_eq!(mac_field_of(&view), Ok(Some(64)));
        let input = mac_input(&view, 64).unwrap();
        assert_eq!(
            input.len() + 16,
            view.buffer().len(),
            "16 hex characters of MAC after it"
        );
        assert!(input.starts_with(b"0200"));
        // Field 64 and a secondary-bitmap field after it: refused.
        b.set(70, "301").unwrap();
        assert_eq!(mac_field_for(&b), 128);
        let view = MessageView::decode(spec, b.encode()).unwrap();
        assert!(mac_field_of(&view).is_err());
        b.remove(64).set(128, [1; 8]).unwrap();
        let view = MessageView::decode(spec, b.encode()).unwrap();
        assert_eq!(mac_field_of(&view), Ok(Some(128)));
    }
}
