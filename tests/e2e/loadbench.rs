//! The load benchmark in smoke size, so that it cannot rot: every shape and scenario runs
//! against the real binary and answers everything.

#[test]
fn the_load_benchmark_runs_every_shape_and_scenario() {
    let options = switchyard_benches::loadbench::Options {
        switchyard: env!("CARGO_BIN_EXE_switchyard").into(),
        smoke: true,
        repetitions: 1,
    };
    let (rows, report) = switchyard_benches::loadbench::run(&options).unwrap();
    assert_eq!(rows.len(), 16, "{report}");
    for row in &rows {
        assert!(row.tps > 0.0, "{report}");
        assert_eq!(row.errors, 0, "{report}");
        assert!(row.sims_cpu_us > 0.0, "{report}");
        if row.shape != switchyard_benches::loadbench::Shape::Direct {
            assert!(
                row.switch_rss_mib > 0.0 && row.switch_cpu_s > 0.0,
                "{report}"
            );
        }
    }
    assert!(
        report.contains("idle: 200 terminal connections"),
        "{report}"
    );
    let budgets = report
        .lines()
        .filter(|l| l.starts_with("cpu per transaction, ") && l.contains("could use"))
        .count();
    assert_eq!(
        budgets, 2,
        "a CPU budget line per pipelined scenario: {report}"
    );
}
