//! Criterion benchmarks of the storage paths at queue depth 1 and 32 on a
//! 256 MiB `O_DIRECT` file: `pread`, io_uring used directly, and the dbos
//! queue pair + poller in process mode. (`nvme-compare` is the side-by-side
//! report with fio and the target ratios.)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dbos_benches::nvme::{
    prepare_file, run_pread, run_queue_pair, run_uring, Budget, Pattern, Workload,
};
use dbos_nvme::host::{BackingFile, PollerConfig, UringConfig};
use std::time::Duration;

fn file() -> BackingFile {
    let path = std::env::temp_dir().join("nvme-criterion.img");
    prepare_file(&path, 256 << 20).expect("benchmark file (needs O_DIRECT in the temp dir)")
}

fn bench(c: &mut Criterion) {
    let file = file();
    let workloads = [
        Workload {
            pattern: Pattern::RandRead,
            block: 4096,
            depth: 1,
        },
        Workload {
            pattern: Pattern::RandRead,
            block: 4096,
            depth: 32,
        },
        Workload {
            pattern: Pattern::SeqWrite,
            block: 4096,
            depth: 1,
        },
        Workload {
            pattern: Pattern::SeqWrite,
            block: 65536,
            depth: 32,
        },
    ];
    for w in workloads {
        let mut g = c.benchmark_group(w.name());
        g.throughput(Throughput::Elements(1));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(2));
        g.warm_up_time(Duration::from_millis(500));
        g.bench_function("pread", |b| {
            b.iter_custom(|n| run_pread(&file, w, Budget::ops(n)).elapsed)
        });
        g.bench_function("io_uring", |b| {
            b.iter_custom(|n| run_uring(&file, w, Budget::ops(n)).elapsed)
        });
        g.bench_function("queue_pair", |b| {
            b.iter_custom(|n| {
                run_queue_pair(
                    &file,
                    w,
                    Budget::ops(n),
                    PollerConfig::default(),
                    UringConfig::default(),
                )
                .elapsed
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
