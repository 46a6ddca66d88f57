//! `cargo bench --features cli`: the same benchmark as `aiowal bench`, default settings.
//! Set AIOWAL_BENCH_SECS to change the duration of each run.

fn main() {
    let mut cfg = aiowal::bench::Config::default();
    if let Some(secs) = std::env::var("AIOWAL_BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()) {
        cfg.duration = std::time::Duration::from_secs_f64(secs);
    }
    cfg.dir = std::env::temp_dir();
    if let Ok(d) = std::env::current_dir() {
        cfg.dir = d;
    }
    println!("{}", aiowal::bench::environment(&cfg.dir));
    println!("{}", aiowal::bench::header());
    match aiowal::bench::run(&cfg, |row| println!("{}", aiowal::bench::format_row(row))) {
        Ok(rows) => {
            println!("\n{}", aiowal::bench::legend());
            for w in aiowal::bench::warnings(&rows) {
                println!("WARNING: {w}");
            }
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
