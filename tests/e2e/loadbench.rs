//! The load benchmark in smoke size, so that it cannot rot: every shape and scenario runs
//! against the real binary and answers everything.

#[test]
fn the_load_benchmark_runs_every_shape_and_scenario() {
    let options = switchyard_benches::loadbench::Options {
        switchyard: env!("CARGO_BIN_EXE_switchyard").into(),
        smoke: true,
        repetitions: 1,
        only: None,
    };
    let (rows, report) = switchyard_benches::loadbench::run(&options).unwrap();
    assert_eq!(rows.len(), 24, "{report}");
    for row in &rows {
        assert!(row.tps > 0.0, "{report}");
        assert_eq!(row.errors, 0, "{report}");
        assert!(row.sims_cpu_us > 0.0, "{report}");
        // CPU comes in clock ticks of 10 ms: the short smoke runs of the pipelined
        // scenarios are long enough to read the issuer simulator's.
        let pipelined = row.scenario.contains("x 8") || row.scenario.starts_with("100 conns");
        if pipelined {
            assert!(row.issuer_cpu_us > 0.0, "{report}");
        }
        if row.shape != switchyard_benches::loadbench::Shape::Direct {
            assert!(
                row.switch_rss_mib > 0.0 && row.switch_cpu_s > 0.0,
                "{report}"
            );
            assert!(!pipelined || row.cpu_ratio() > 0.0, "{report}");
        }
        if row.shape == switchyard_benches::loadbench::Shape::Group {
            // Terminals at home: their requests claimed behind, and none found another's.
            let claims = row.claims.expect("the group's claims");
            assert!(
                claims.behind + claims.recorded > 0.0 && claims.lost == 0.0,
                "{report}"
            );
        }
        assert_eq!(
            row.claims.is_some(),
            row.shape == switchyard_benches::loadbench::Shape::Group
        );
    }
    assert!(report.contains("fdatasync of a 4 KiB page"), "{report}");
    assert!(
        report.contains("idle: 200 terminal connections"),
        "{report}"
    );
    let goals = report.lines().filter(|l| l.starts_with("goal ")).count();
    assert_eq!(
        goals, 9,
        "a verdict per goal: durable and lean for each pipelined scenario, one request in flight, the shared state's added latency in each scenario: {report}"
    );
}
