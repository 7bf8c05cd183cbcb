//! `benches/run.sh` runs this: the load benchmark against a release `switchyard`.
//! `loadbench SWITCHYARD_BINARY [--smoke] [--repetitions N] [--only SCENARIO]`
//! (`--only "10 conns x 8"` runs the scenarios whose name contains it).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(binary) = args.first() else {
        eprintln!(
            "usage: loadbench SWITCHYARD_BINARY [--smoke] [--repetitions N] [--only SCENARIO]"
        );
        return std::process::ExitCode::from(64);
    };
    let smoke = args.iter().any(|a| a == "--smoke");
    let repetitions = args
        .iter()
        .position(|a| a == "--repetitions")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 3 });
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let options = switchyard_benches::loadbench::Options {
        switchyard: binary.into(),
        smoke,
        repetitions,
        only,
    };
    match switchyard_benches::loadbench::run(&options) {
        Ok((_, report)) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadbench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
