//! The machine a report is measured on: CPU model, cores, memory, kernel,
//! the disk under the benchmark files, and what KVM is here (hardware ring
//! 0 or emulated).

use super::report::Machine;
use std::path::Path;

/// Describes this machine; `dir` is where the benchmark files go.
pub fn describe(dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
    let flags = field(&cpuinfo, "flags").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| field(&m, "MemTotal"))
        .and_then(|kb| kb.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| format!("{:.1} GiB", kb / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |s| format!("Linux {}", s.trim()));
    let (kvm, kvm_hardware) = kvm_kind(&flags);
    Machine {
        cpu,
        cores,
        memory,
        kernel,
        disk: disk_of(dir),
        kvm,
        kvm_hardware,
    }
}

/// The value of the first `name : value` line of a /proc file.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// What KVM is on this host, and whether guest ring 0 runs on hardware.
/// Without a `vmx`/`svm` CPU flag, a working `/dev/kvm` is a software
/// virtual machine (here the `kvm_pvm` module), whose x86 emulator runs
/// every ring-0 instruction.
fn kvm_kind(flags: &str) -> (String, bool) {
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if !Path::new("/dev/kvm").exists() {
        return ("no /dev/kvm: guest sections not available".into(), false);
    }
    if has("vmx") || has("svm") {
        let which = if has("vmx") { "VT-x" } else { "AMD-V" };
        return (
            format!("hardware ({which}): guest ring 0 runs natively"),
            true,
        );
    }
    let module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("unknown module");
    (
        format!(
            "emulated ({module}, no vmx/svm CPU flag): every guest ring-0 instruction goes \
             through KVM's x86 emulator, so guest paths are judged by counted events"
        ),
        false,
    )
}

/// The block device and file system under `dir`, from /proc/self/mountinfo
/// (the longest mount point that is a prefix of `dir`) and sysfs.
fn disk_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        // id parent major:minor root mount-point options ... - fstype source ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fs), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        if dir.starts_with(point) && best.as_ref().is_none_or(|b| point.len() >= b.0) {
            best = Some((point.len(), fs.to_string(), source.to_string()));
        }
    }
    let Some((_, fs, source)) = best else {
        return "unknown".into();
    };
    let dev = source.trim_start_matches("/dev/");
    let base: String = dev
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('p')
        .to_string();
    let sys = |d: &str, f: &str| {
        std::fs::read_to_string(format!("/sys/block/{d}/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let block = if sys(dev, "size").is_some() {
        dev
    } else {
        &base
    };
    let mut what = format!("{source} ({fs})");
    if let Some(sectors) = sys(block, "size").and_then(|s| s.parse::<f64>().ok()) {
        what += &format!(", {:.0} GiB", sectors * 512.0 / 1073741824.0);
    }
    if let Some(rot) = sys(block, "queue/rotational") {
        what += if rot == "1" {
            ", rotational"
        } else {
            ", non-rotational"
        };
    }
    if Path::new(&format!("/sys/block/{block}/device/virtio_features")).exists()
        || block.starts_with("vd")
    {
        what += ", virtio";
    }
    what
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_described() {
        let m = describe(Path::new("."));
        assert!(m.cores >= 1);
        assert_ne!(m.kernel, "unknown");
        assert!(!m.disk.is_empty());
    }

    #[test]
    fn kvm_without_vmx_or_svm_is_emulated() {
        if Path::new("/dev/kvm").exists() {
            assert!(!kvm_kind("fpu sse2").1);
            assert!(kvm_kind("fpu vmx sse2").1);
        }
    }
}
