//! A business day for the books benchmark: `RECORDS` approved 0200 pair records (realistic
//! protected messages, 50 terminals of 10 merchants, business date 20261203) written to an
//! audit log under demo keys, and the issuer's settlement file of the same transactions.
//! `benches/books.sh` runs it, then times `switchyard audit reconcile` and `audit settle`
//! over the day with their peak memory.
//!
//! `cargo run --release -p switchyard-benches --example books_day -- [RECORDS] [DIR]`
//! (default 1,000,000 records in `target/books-day`: `DIR/audit` and `DIR/settlement.csv`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use switchyard_audit::{
    AuditConfig, AuditKeys, AuditLog, Outcome, PairRecord, RecordKind, ShortText,
};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti};

const APPENDERS: usize = 256;
const DATE: &str = "20261203";

/// Transaction `i`: its terminal, merchant, RRN, STAN and amount.
fn txn(i: usize) -> (String, String, String, String, u64) {
    let terminal = format!("T{:07}", i % 50 + 1);
    let merchant = format!("MERCHANT{:07}", i % 50 % 10 + 1);
    (
        terminal,
        merchant,
        format!("{i:012}"),
        format!("{:06}", i % 999_999 + 1),
        100 + (i as u64 * 7919) % 99_900,
    )
}

fn pair(i: usize, keys: &AuditKeys) -> PairRecord {
    let spec = shipped("iso8583-1987-ascii").unwrap_or_else(|e| panic!("{e}"));
    let (terminal, merchant, rrn, stan, amount) = txn(i);
    let mti = Mti::parse("0200").unwrap_or_else(|| unreachable!());
    let mut b = MessageBuilder::new(spec, mti);
    let fields: [(u8, String); 11] = [
        (2, "4761739001010119".into()),
        (3, "000000".into()),
        (4, format!("{amount:012}")),
        (7, "1203101500".into()),
        (11, stan),
        (22, "051".into()),
        (25, "00".into()),
        (37, rrn),
        (41, terminal),
        (42, merchant),
        (49, "978".into()),
    ];
    for (n, v) in &fields {
        b.set(*n, v).unwrap_or_else(|e| panic!("field {n}: {e}"));
    }
    let request = MessageView::decode(spec, b.encode()).unwrap_or_else(|e| panic!("{e}"));
    let mut response = MessageBuilder::new(spec, mti);
    response
        .respond_to(&request, b"00")
        .unwrap_or_else(|e| panic!("{e}"));
    response
        .set(38, format!("{:06}", i % 1_000_000))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = MessageView::decode(spec, response.encode()).unwrap_or_else(|e| panic!("{e}"));
    let mut pair = PairRecord::from_request(
        "terminals",
        &request,
        keys,
        1_796_292_900_000_000 + i as i64,
    );
    pair.set_response(&response);
    pair.outcome = Some(Outcome::Approved);
    pair.business_date = Some(ShortText::from(DATE));
    pair
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = args
        .next()
        .map_or_else(|| PathBuf::from("target/books-day"), PathBuf::from);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let keys = Arc::new(AuditKeys::demo());
    let config = AuditConfig::new(dir.join("audit"));
    let (log, _) =
        AuditLog::open(config, keys.clone()).unwrap_or_else(|e| panic!("audit log: {e}"));
    let log = Arc::new(log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let (log, keys) = (log.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(APPENDERS) {
                    let record = pair(i, &keys);
                    log.append_record(RecordKind::Pair, &record)
                        .await
                        .unwrap_or_else(|e| panic!("append: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
    drop(log);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(dir.join("settlement.csv")).unwrap_or_else(|e| panic!("{e}")),
    );
    let _ = writeln!(
        file,
        "business_date,rrn,terminal,merchant,stan,amount,currency,response_code,auth_id"
    );
    for i in 0..n {
        let (terminal, merchant, rrn, stan, amount) = txn(i);
        let _ = writeln!(
            file,
            "{DATE},{rrn},{terminal},{merchant},{stan},{amount},978,00,{:06}",
            i % 1_000_000
        );
    }
    let _ = file.flush();
    println!(
        "{n} records and their settlement file in {} ({:.1} s)",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
}
