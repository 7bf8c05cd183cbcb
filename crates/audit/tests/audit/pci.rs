//! Card data never reaches a segment in clear: canary PAN, track 2, PIN block and EMV card
//! tags written through the log are searched for in every byte of every file.

use std::path::Path;

use switchyard_audit::{query, report, Filter, OnDamage, Outcome, PairRecord, RecordKind};
use switchyard_iso8583::{shipped, tlv, MessageBuilder, MessageView, Mti};

use crate::{keys, open, small};

const PAN: &str = "4000056655665556";
const TRACK2: &str = "4000056655665556=29121011234567890123";
const PIN_BLOCK: [u8; 8] = [0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6, 0x07, 0x89];
const CARDHOLDER: &[u8] = b"CANARY/CARDHOLDER";

fn request() -> MessageView<'static> {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let mut icc = Vec::new();
    tlv::push(&mut icc, 0x9F26, &[1, 2, 3, 4, 5, 6, 7, 8]); // cryptogram: kept
    tlv::push(
        &mut icc,
        0x5A,
        &[0x40, 0x00, 0x05, 0x66, 0x55, 0x66, 0x55, 0x56],
    ); // PAN
    tlv::push(
        &mut icc,
        0x57,
        &[
            0x40, 0x00, 0x05, 0x66, 0x55, 0x66, 0x55, 0x56, 0xD2, 0x91, 0x21,
        ],
    );
    tlv::push(&mut icc, 0x5F20, CARDHOLDER);
    tlv::push(&mut icc, 0x9F02, &[0, 0, 0, 0, 0x12, 0x34]); // amount: kept
    let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
    b.set(2, PAN)
        .unwrap()
        .set(3, "000000")
        .unwrap()
        .set(4, "000000001234")
        .unwrap();
    b.set(7, "1124093000")
        .unwrap()
        .set(11, "000042")
        .unwrap()
        .set(35, TRACK2)
        .unwrap();
    b.set(37, "432100000042")
        .unwrap()
        .set(41, "TERM0001")
        .unwrap();
    b.set(42, "MERCHANT0000001")
        .unwrap()
        .set(49, "978")
        .unwrap();
    b.set(52, PIN_BLOCK).unwrap().set(55, &icc).unwrap();
    MessageView::decode(spec, b.encode()).unwrap()
}

fn response(req: &MessageView<'_>) -> MessageView<'static> {
    let spec = shipped("iso8583-1987-ascii").unwrap();
    let mut b = MessageBuilder::new(spec, req.mti());
    b.respond_to(req, b"00").unwrap();
    b.set(2, PAN).unwrap();
    MessageView::decode(spec, b.encode()).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.push((entry.display().to_string(), std::fs::read(&entry).unwrap()));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

/// The canary request and its approval, as the switch records them.
fn approved_pair(keys: &switchyard_audit::AuditKeys) -> PairRecord {
    let req = request();
    let mut pair = PairRecord::from_request("terminals", &req, keys, 1_795_499_071_000_000);
    pair.set_response(&response(&req));
    pair.outcome = Some(Outcome::Approved);
    pair
}

#[tokio::test]
async fn canary_card_data_never_appears_in_any_segment_byte() {
    let dir = crate::disk_dir();
    let (log, _) = open(small(dir.path()));
    let keys = keys();
    let mut pair = approved_pair(&keys);
    pair.issuer = Some("issuer-a".into());
    log.append_record(RecordKind::Pair, &pair).await.unwrap();
    log.close().unwrap();

    let pan_bcd = [0x40u8, 0x00, 0x05, 0x66, 0x55, 0x66, 0x55, 0x56];
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("PAN", PAN.as_bytes().to_vec()),
        ("PAN middle digits", b"056655".to_vec()),
        ("track 2", TRACK2.as_bytes().to_vec()),
        ("track 2 discretionary data", b"1011234567890123".to_vec()),
        ("PIN block", PIN_BLOCK.to_vec()),
        ("PIN block hex", b"A1B2C3D4E5F60789".to_vec()),
        ("PIN block hex lower", b"a1b2c3d4e5f60789".to_vec()),
        ("PAN in EMV (BCD)", pan_bcd.to_vec()),
        ("cardholder name", CARDHOLDER.to_vec()),
    ];
    let files = all_bytes(dir.path());
    assert!(files.iter().any(|(n, _)| n.ends_with(".seg")));
    for (name, bytes) in &files {
        for (what, secret) in &secrets {
            assert!(!contains(bytes, secret), "{what} found in {name}");
        }
    }

    // What is kept: masked PAN, the PAN hash for search, allowed EMV tags, the withheld list.
    let mut found = Vec::new();
    let filter = Filter {
        pan_hash: Some(keys.pan_hash(PAN.as_bytes())),
        ..Filter::default()
    };
    let stop = OnDamage::Stop;
    let queried = query(dir.path(), keys.chain(), stop, &filter, |_, r| {
        found.push(r)
    });
    assert_eq!(queried.unwrap().matched, 1);
    let r = &found[0];
    assert_eq!(r.pan.as_ref().unwrap().masked, "400005******5556");
    assert_eq!(r.request.fields.get(2).unwrap(), "400005******5556");
    assert_eq!(r.request.withheld, [35, 52]);
    let emv = r.request.fields.get(55).unwrap();
    assert!(
        emv.contains("9F26080102030405060708"),
        "cryptogram kept: {emv}"
    );
    assert!(emv.contains("9F0206000000001234"), "amount kept: {emv}");
    assert!(
        !emv.contains("5A08") && !emv.contains("5708"),
        "card tags dropped: {emv}"
    );
    assert_eq!(
        r.response.as_ref().unwrap().fields.get(2).unwrap(),
        "400005******5556"
    );
    assert_eq!(
        (r.amount, r.rrn.as_deref(), r.terminal.as_deref()),
        (Some(1234), Some("432100000042"), Some("TERM0001"))
    );

    let rows = report(
        dir.path(),
        keys.chain(),
        stop,
        &Filter::default(),
        &Default::default(),
    )
    .unwrap()
    .rows;
    let day = rows.iter().find(|r| r.dimension == "day").unwrap();
    assert_eq!(
        (day.key.as_str(), day.currency.as_str()),
        ("2026-11-24", "978")
    );
    assert_eq!((day.totals.approved, day.totals.approved_amount), (1, 1234));
    let other_pan = Filter {
        pan_hash: Some(keys.pan_hash(b"4000056655665557")),
        ..Filter::default()
    };
    let queried = query(dir.path(), keys.chain(), stop, &other_pan, |_, _| {});
    assert_eq!(queried.unwrap().matched, 0);
}

#[tokio::test]
async fn a_log_whose_payloads_are_json_as_older_versions_wrote_them_queries_the_same() {
    let dir = crate::disk_dir();
    let (log, _) = open(small(dir.path()));
    let keys = keys();
    let pair = approved_pair(&keys);
    // One record as this version writes it, one as JSON (the payload format before).
    log.append_record(RecordKind::Pair, &pair).await.unwrap();
    let json = serde_json::to_vec(&pair).unwrap();
    log.append(RecordKind::Pair, json).await.unwrap();
    log.close().unwrap();
    let mut found = Vec::new();
    let queried = query(
        dir.path(),
        keys.chain(),
        OnDamage::Stop,
        &Filter::default(),
        |seq, r| found.push((seq, r)),
    );
    assert_eq!(queried.unwrap().matched, 2);
    assert_eq!(found[0].1, pair);
    assert_eq!(found[1].1, pair);
    let verified = switchyard_audit::verify(dir.path(), keys.chain()).unwrap();
    assert_eq!(verified.records, 2);
}

#[tokio::test]
async fn records_written_from_recycled_payload_buffers_read_back_whole() {
    let dir = crate::disk_dir();
    let (log, _) = open(small(dir.path()));
    let keys = keys();
    let mut written = Vec::new();
    for i in 0..50u64 {
        let mut pair = approved_pair(&keys);
        pair.amount = Some(i);
        // Every fifth one long, so that buffers of several sizes go round.
        if i % 5 == 0 {
            pair.rules = vec!["r".repeat(3000)];
        }
        let payload = log.encode(&pair).unwrap();
        log.append(RecordKind::Pair, payload).await.unwrap();
        written.push(pair);
    }
    log.close().unwrap();
    let mut read = Vec::new();
    let filter = Filter::default();
    query(dir.path(), keys.chain(), OnDamage::Stop, &filter, |_, r| {
        read.push(r)
    })
    .unwrap();
    assert_eq!(read, written);
}
