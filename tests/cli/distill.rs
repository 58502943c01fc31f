//! Few-step distillation through the tools (notes section 7): a briefly trained checkerboard
//! teacher distilled by each method; the students sample in 1, 2 and 4 steps and beat the
//! teacher's Euler sampler at the same NFE; same seed same bytes; a conditional teacher with
//! guidance distilled in; bad teachers and flags fail cleanly.

use crate::common::*;

const DATA: &str = bin!("sample-data");
const NOISE: &str = bin!("sample-noise");
const FIT: &str = bin!("fit-velocity");
const SIM: &str = bin!("simulate-sde");
const EVAL: &str = bin!("evaluate");
const DISTILL: &str = bin!("distill");
const FEW: &str = bin!("sample-fewstep");

fn energy(samples: &str, reference: &str) -> f64 {
    let out = ok(
        EVAL,
        &[samples, "--reference", reference, "--max-n", "1000"],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["energy_distance"]["value"].as_f64().unwrap()
}

fn read(p: &str) -> ndarray::ArrayD<f32> {
    flowpipe::io::npy::read_f32(p).unwrap()
}

/// A checkerboard teacher trained briefly, reference samples and noise, in `dir`.
fn teacher(dir: &tempfile::TempDir) -> (String, String, String) {
    let (data, reference, noise) = checkerboard_files(dir);
    let model = path(dir, "teacher.safetensors");
    ok(
        FIT,
        &[
            "--data",
            &data,
            "--path",
            "condot",
            "--steps",
            "600",
            "--batch",
            "256",
            "--lr",
            "3e-3",
            "--hidden",
            "48,48,48",
            "--time-features",
            "2",
            "-q",
            "-o",
            &model,
        ],
        b"",
    );
    (model, reference, noise)
}

/// Distils `teacher` by `method` with `steps` optimiser steps on `m` trajectories of 16 steps.
fn distill(teacher: &str, method: &str, out: &str, steps: &str, m: &str, extra: &[&str]) {
    let mut args = vec![
        "--teacher",
        teacher,
        "--method",
        method,
        "--teacher-steps",
        "16",
        "--trajectories",
        m,
        "--steps",
        steps,
        "--batch",
        "256",
        "--lr",
        "2e-3",
        "-q",
        "-o",
        out,
    ];
    args.extend_from_slice(extra);
    ok(DISTILL, &args, b"");
}

#[test]
fn students_beat_the_teacher_at_the_same_nfe_on_checkerboard() {
    let dir = tmp();
    let (model, reference, noise) = teacher(&dir);
    let mut teacher_ed = Vec::new();
    for k in ["1", "2"] {
        let x1 = path(&dir, &format!("teacher-{k}.npy"));
        ok(
            SIM,
            &[&noise, "--field", &model, "--steps", k, "-q", "-o", &x1],
            b"",
        );
        teacher_ed.push(energy(&x1, &reference));
    }
    for method in ["reflow", "flowmap", "consistency"] {
        let student = path(&dir, &format!("{method}.safetensors"));
        distill(&model, method, &student, "400", "2048", &[]);
        for (i, k) in ["1", "2", "4"].into_iter().enumerate() {
            let x1 = path(&dir, &format!("{method}-{k}.npy"));
            ok(
                FEW,
                &[&noise, "--model", &student, "--steps", k, "-o", &x1],
                b"",
            );
            let x = read(&x1);
            assert_eq!(x.shape(), &[1000, 2]);
            assert!(x.iter().all(|v| v.is_finite()), "{method} {k}");
            if i < 2 {
                // The teacher's Euler sampler at 1 and 2 steps lands between the squares (energy
                // distance about 2 and 0.8 for this teacher); a student must at least halve it.
                let ed = energy(&x1, &reference);
                assert!(
                    ed < 0.5 * teacher_ed[i],
                    "{method} at {k} steps: {ed} vs the teacher's {}",
                    teacher_ed[i]
                );
            }
        }
    }
}

#[test]
fn same_seed_same_bytes_and_batching_does_not_matter() {
    let dir = tmp();
    let (data, noise) = (path(&dir, "g.npy"), path(&dir, "z.npy"));
    ok(
        DATA,
        &["8gaussians", "-n", "1000", "--seed", "1", "-o", &data],
        b"",
    );
    ok(NOISE, &["-n", "50", "--seed", "3", "-o", &noise], b"");
    let model = path(&dir, "t.safetensors");
    ok(
        FIT,
        &[
            "--data", &data, "--steps", "20", "--batch", "64", "--hidden", "16,16", "-q", "-o",
            &model,
        ],
        b"",
    );
    let a = path(&dir, "a.safetensors");
    let b = path(&dir, "b.safetensors");
    for out in [&a, &b] {
        distill(&model, "consistency", out, "20", "64", &["--seed", "5"]);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let whole = ok(
        FEW,
        &[&noise, "--model", &a, "--steps", "4", "--seed", "2"],
        b"",
    );
    let parts = ok(
        FEW,
        &[
            &noise, "--model", &a, "--steps", "4", "--seed", "2", "--batch", "7",
        ],
        b"",
    );
    // The same draws whatever the batching; only the matrix products' blocking may move the
    // last bits.
    let (w, p) = (
        flowpipe::io::npy::decode_f32(&whole, "whole").unwrap(),
        flowpipe::io::npy::decode_f32(&parts, "parts").unwrap(),
    );
    let diff = w
        .iter()
        .zip(p.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "batching moved a sample by {diff}");
    let other = ok(
        FEW,
        &[&noise, "--model", &a, "--steps", "4", "--seed", "3"],
        b"",
    );
    assert_ne!(whole, other, "re-noising must follow --seed");
    let meta = flowpipe::io::model::load(&a, &candle_core::Device::Cpu).unwrap();
    assert_eq!(meta.kind(), "consistency");
    assert_eq!(meta.config["distill"]["method"], "consistency");
    assert_eq!(meta.config["distill"]["teacher_steps"], 16);
    // --time-density is recorded and used: the default is uniform, another density trains
    // another student, and a bad one is a usage error.
    assert_eq!(meta.config["distill"]["train"]["time_density"], "uniform");
    let c = path(&dir, "c.safetensors");
    distill(
        &model,
        "consistency",
        &c,
        "20",
        "64",
        &["--seed", "5", "--time-density", "mode:1.29"],
    );
    let meta = flowpipe::io::model::load(&c, &candle_core::Device::Cpu).unwrap();
    assert_eq!(meta.config["distill"]["train"]["time_density"], "mode:1.29");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let bad = run(
        DISTILL,
        &[
            "--teacher",
            &model,
            "--method",
            "reflow",
            "--time-density",
            "mode:3",
            "-o",
            &c,
        ],
        b"",
    );
    fails(&bad, 2, &["--time-density", "mode"]);
}

#[test]
fn a_conditional_teacher_is_distilled_with_its_guidance() {
    let dir = tmp();
    let (data, labels, noise) = (
        path(&dir, "m.npy"),
        path(&dir, "y.npy"),
        path(&dir, "z.npy"),
    );
    ok(
        DATA,
        &[
            "moons", "-n", "1000", "--seed", "1", "--labels", &labels, "-o", &data,
        ],
        b"",
    );
    ok(NOISE, &["-n", "20", "--seed", "3", "-o", &noise], b"");
    let model = path(&dir, "t.safetensors");
    ok(
        FIT,
        &[
            "--data", &data, "--labels", &labels, "--steps", "30", "--batch", "64", "--hidden",
            "16,16", "-q", "-o", &model,
        ],
        b"",
    );
    let student = path(&dir, "fm.safetensors");
    distill(
        &model,
        "flowmap",
        &student,
        "20",
        "64",
        &["--guidance", "2.5"],
    );
    let m = flowpipe::io::model::load(&student, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.kind(), "flowmap");
    assert_eq!(m.config["distill"]["guidance"], 2.5);
    assert_eq!(m.config["num_classes"], 2);
    // simulate-sde points a student to sample-fewstep.
    let out = run(SIM, &[&noise, "--field", &student, "--steps", "2"], b"");
    fails(
        &out,
        1,
        &["fm.safetensors", "few-step student", "sample-fewstep"],
    );
    // A conditional student needs one label per sample.
    let out = run(FEW, &[&noise, "--model", &student, "--steps", "2"], b"");
    fails(&out, 1, &["fm.safetensors", "--labels"]);
    let y = path(&dir, "asked.npy");
    let asked = ndarray::Array1::from_iter((0..20).map(|i| (i % 2) as i64)).into_dyn();
    flowpipe::io::npy::write(&y, &asked).unwrap();
    let x1 = path(&dir, "x1.npy");
    ok(
        FEW,
        &[
            &noise, "--model", &student, "--steps", "2", "--labels", &y, "-o", &x1,
        ],
        b"",
    );
    assert_eq!(read(&x1).shape(), &[20, 2]);
    // Its guidance is fixed: --guidance is refused.
    let out = run(
        FEW,
        &[
            &noise,
            "--model",
            &student,
            "--labels",
            &y,
            "--guidance",
            "3",
        ],
        b"",
    );
    fails(&out, 1, &["fm.safetensors", "--guidance does not apply"]);

    // What the student learns is the guided field of eq. 65: the teacher trajectories' recorded
    // straightness equals the one of eq. 65 integrated here from the model's two branches.
    let reflow = path(&dir, "rf.safetensors");
    distill(&model, "reflow", &reflow, "1", "64", &["--guidance", "2.5"]);
    let m = flowpipe::io::model::load(&reflow, &candle_core::Device::Cpu).unwrap();
    let got = m.config["distill"]["straightness_teacher"]
        .as_f64()
        .unwrap();
    let want = guided_straightness_by_hand(&model, 2.5, 64, 16);
    let conditional = guided_straightness_by_hand(&model, 1.0, 64, 16);
    assert!(
        (got - want).abs() < 1e-2 * want,
        "the bank's straightness {got}, eq. 65 by hand {want}"
    );
    assert!(
        (conditional - want).abs() > 0.1 * want,
        "guidance must matter here: w = 1 gives {conditional}, w = 2.5 {want}"
    );
}

/// The straightness of the trajectories `distill --guidance w` learns from (`m` of them, Heun
/// with `steps` steps, labels 0..K-1 in turn, noise row i from stream (0, Noise, i)), computed
/// here apart from the library's guidance: u~ = (1 - w) u(x | null) + w u(x | y) (notes eq. 65)
/// from two separate calls of the teacher, integrated in f64. Straightness as
/// `flowpipe::distill::reflow::straightness`: the mean square of N (x_{k+1} - x_k) - (x_N - x_0).
fn guided_straightness_by_hand(model: &str, w: f64, m: usize, steps: usize) -> f64 {
    use candle_core::{Device, Tensor};
    use flowpipe::nn::{Learned, Weights};
    use flowpipe::paths::Param;
    use flowpipe::rng::{normal_rows, Purpose};
    let dev = Device::Cpu;
    let file = flowpipe::io::model::load(model, &dev).unwrap();
    let learned = Learned::load(&file, Weights::Auto, &dev).unwrap();
    let k = learned.num_classes();
    let y = Tensor::from_vec((0..m).map(|i| (i % k) as u32).collect(), m, &dev).unwrap();
    let null = Tensor::full(k as u32, m, &dev).unwrap();
    let field = |x: &[f64], t: f64| -> Vec<f64> {
        let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let xt = Tensor::from_vec(xs, (m, 2), &dev).unwrap();
        let tt = Tensor::full(t as f32, (m, 1), &dev).unwrap();
        let branch = |labels: &Tensor| -> Vec<f32> {
            let u = learned.predict_as_labelled(Param::Velocity, &xt, &tt, Some(labels));
            u.unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let (cond, uncond) = (branch(&y), branch(&null));
        cond.iter()
            .zip(&uncond)
            .map(|(&c, &u)| (1.0 - w) * u as f64 + w * c as f64)
            .collect()
    };
    let mut x: Vec<f64> = normal_rows(0, Purpose::Noise, 0, m, 2)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let h = 1.0 / steps as f64;
    let mut states = vec![x.clone()];
    for k in 0..steps {
        let t = k as f64 * h;
        let k1 = field(&x, t);
        let pred: Vec<f64> = x.iter().zip(&k1).map(|(a, b)| a + h * b).collect();
        let k2 = field(&pred, t + h);
        for ((xi, a), b) in x.iter_mut().zip(&k1).zip(&k2) {
            *xi += h / 2.0 * (a + b);
        }
        states.push(x.clone());
    }
    let n = steps as f64;
    let chord: Vec<f64> = states[steps]
        .iter()
        .zip(&states[0])
        .map(|(b, a)| b - a)
        .collect();
    let mut sum = 0.0;
    for pair in states.windows(2) {
        for ((b, a), c) in pair[1].iter().zip(&pair[0]).zip(&chord) {
            sum += (n * (b - a) - c).powi(2);
        }
    }
    sum / (steps * x.len()) as f64
}

#[test]
fn bad_teachers_and_flags_fail_without_writing() {
    let dir = tmp();
    let (data, noise) = (path(&dir, "g.npy"), path(&dir, "z.npy"));
    ok(
        DATA,
        &["8gaussians", "-n", "200", "--seed", "1", "-o", &data],
        b"",
    );
    ok(NOISE, &["-n", "10", "--seed", "3", "-o", &noise], b"");
    let model = path(&dir, "t.safetensors");
    ok(
        FIT,
        &[
            "--data", &data, "--steps", "5", "--hidden", "8", "-q", "-o", &model,
        ],
        b"",
    );
    let student = path(&dir, "c.safetensors");
    distill(&model, "consistency", &student, "5", "16", &[]);
    let out_path = path(&dir, "out.safetensors");
    // A student is not a teacher.
    let out = run(
        DISTILL,
        &["--teacher", &student, "--method", "reflow", "-o", &out_path],
        b"",
    );
    fails(
        &out,
        1,
        &[
            "distill: error:",
            "c.safetensors",
            "expected a velocity model",
            "found a consistency model",
        ],
    );
    // Nor is a .npy file.
    let out = run(
        DISTILL,
        &["--teacher", &noise, "--method", "reflow", "-o", &out_path],
        b"",
    );
    fails(&out, 1, &["z.npy", "expected a .safetensors model file"]);
    // The flow map needs a power of two of teacher steps.
    let out = run(
        DISTILL,
        &[
            "--teacher",
            &model,
            "--method",
            "flowmap",
            "--teacher-steps",
            "24",
            "-o",
            &out_path,
        ],
        b"",
    );
    fails(&out, 2, &["power of two"]);
    // --guidance needs a conditional teacher.
    let out = run(
        DISTILL,
        &[
            "--teacher",
            &model,
            "--method",
            "reflow",
            "--guidance",
            "2",
            "-o",
            &out_path,
        ],
        b"",
    );
    fails(&out, 1, &["t.safetensors", "unconditional"]);
    assert!(!std::path::Path::new(&out_path).exists());
    // Noise of the wrong shape for the student.
    let bad = path(&dir, "bad.npy");
    ok(NOISE, &["-n", "4", "--shape", "3", "-o", &bad], b"");
    let out = run(FEW, &[&bad, "--model", &student, "-o", &out_path], b"");
    fails(&out, 1, &["bad.npy", "(4, 3)"]);
    assert!(!std::path::Path::new(&out_path).exists());
}

/// `make distill-2d SMALL=1`: the checkerboard teacher, three students, the few-step models
/// trained from data, the NFE table (every row a finite energy distance) and the grid picture.
#[test]
fn distill_2d_pipeline_at_small_sizes() {
    let out = tmp();
    make_small(&["distill-2d"], out.path(), &[]);
    let dir = out.path().join("distill");
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("table-2d.json")).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    // The teacher at 7 step counts, then each student and each model from data at 1, 2, 4.
    let models = [
        "reflow",
        "flowmap",
        "consistency",
        "shortcut-data",
        "meanflow-data",
        "consistency-data",
    ];
    assert_eq!(rows.len(), 7 + 3 * models.len());
    for row in rows {
        assert!(
            row["energy_distance"].as_f64().unwrap().is_finite(),
            "{row}"
        );
    }
    assert_eq!(rows[0]["model"], "teacher");
    for (i, m) in models.iter().enumerate() {
        assert_eq!(rows[7 + 3 * i]["model"], *m);
        assert_eq!(rows[7 + 3 * i + 2]["nfe"], 4);
    }
    assert!(dir.join("grids-2d.png").is_file());
    assert!(dir.join("table-2d.txt").is_file());
    // The table as a plot, and the teacher's and each student's loss curve beside them.
    for f in [
        "nfe-2d.png",
        "2d/teacher-loss.png",
        "2d/reflow-loss.png",
        "2d/flowmap-loss.png",
        "2d/consistency-loss.png",
        "2d/consistency-data-loss.png",
    ] {
        let img = image::open(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 640 && img.height() >= 420, "{f}");
    }
}

/// A tiny class-conditional DiT on (N, 4, 4, 4) latents: every method distils it with guidance
/// and samples with labels in the latents' shape.
#[test]
fn a_dit_teacher_on_latents_is_distilled_by_every_method() {
    let dir = tmp();
    let (data, noise, labels) = (
        path(&dir, "lat.npy"),
        path(&dir, "z.npy"),
        path(&dir, "y.npy"),
    );
    ok(
        NOISE,
        &["-n", "64", "--shape", "4,4,4", "--seed", "1", "-o", &data],
        b"",
    );
    ok(
        NOISE,
        &["-n", "6", "--shape", "4,4,4", "--seed", "2", "-o", &noise],
        b"",
    );
    let y = ndarray::Array1::from_iter((0..64).map(|i| (i % 3) as i64)).into_dyn();
    flowpipe::io::npy::write(&labels, &y).unwrap();
    // A tiny labelled DiT, 3 steps, with `more` flags.
    let fit_dit = |more: &[&str], out: &str| {
        let mut args = vec![
            "--data", &data, "--labels", &labels, "--arch", "dit", "--patch", "1", "--width", "16",
            "--depth", "1", "--heads", "2", "--steps", "3", "--batch", "16", "-q", "-o", out,
        ];
        args.extend(more);
        ok(FIT, &args, b"");
    };
    let model = path(&dir, "dit.safetensors");
    fit_dit(&[], &model);
    let asked = path(&dir, "asked.npy");
    let a = ndarray::Array1::from_iter((0..6).map(|i| (i % 3) as i64)).into_dyn();
    flowpipe::io::npy::write(&asked, &a).unwrap();

    // The DiT's time scale: 1000 by default, 1 for MeanFlow (whose target holds the network's
    // derivative in t), or what --time-scale says; a MeanFlow DiT samples with guidance.
    let load = |m: &str| flowpipe::io::model::load(m, &candle_core::Device::Cpu).unwrap();
    assert_eq!(load(&model).config["time_scale"], 1000.0);
    for (extra, scale) in [(None, 1.0), (Some("20"), 20.0)] {
        let mf = path(&dir, "meanflow.safetensors");
        let mut more = vec!["--objective", "meanflow"];
        if let Some(s) = extra {
            more.extend(["--time-scale", s]);
        }
        fit_dit(&more, &mf);
        assert_eq!(load(&mf).config["time_scale"], scale);
        let x1 = path(&dir, "meanflow-x1.npy");
        ok(
            FEW,
            &[
                &noise,
                "--model",
                &mf,
                "--labels",
                &asked,
                "--steps",
                "2",
                "--guidance",
                "2",
                "-o",
                &x1,
            ],
            b"",
        );
        assert!(read(&x1).iter().all(|v| v.is_finite()));
    }
    let unet = [
        "--data",
        &data,
        "--arch",
        "unet",
        "--time-scale",
        "5",
        "--steps",
        "1",
        "-o",
        &model,
    ];
    fails(&run(FIT, &unet, b""), 2, &["--time-scale", "unet"]);

    for method in ["reflow", "flowmap", "consistency"] {
        let student = path(&dir, &format!("{method}.safetensors"));
        let args = [
            "--teacher",
            &model,
            "--method",
            method,
            "--guidance",
            "2",
            "--teacher-steps",
            "4",
            "--trajectories",
            "12",
            "--steps",
            "2",
            "--batch",
            "4",
            "-q",
            "-o",
            &student,
        ];
        let out = run(DISTILL, &args, b"");
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty(),
            "no parameter starts fresh"
        );
        let x1 = path(&dir, &format!("{method}-x1.npy"));
        ok(
            FEW,
            &[
                &noise, "--model", &student, "--labels", &asked, "--steps", "2", "-o", &x1,
            ],
            b"",
        );
        let x = read(&x1);
        assert_eq!(x.shape(), &[6, 4, 4, 4], "{method}");
        assert!(x.iter().all(|v| v.is_finite()), "{method}");
    }
}

/// fit-velocity --objective shortcut, meanflow and consistency (issue 28): each model trained
/// from the checkerboard data alone samples in one step far closer to the data than a flow
/// matching model of the same size and steps sampled by one Euler step; each resumes into the
/// same file and keeps its objective, and their flags are checked.
#[test]
fn few_step_models_from_data_beat_one_euler_step() {
    let dir = tmp();
    let (data, refs, noise) = (
        path(&dir, "d.npy"),
        path(&dir, "r.npy"),
        path(&dir, "z.npy"),
    );
    ok(
        DATA,
        &["checkerboard", "-n", "8000", "--seed", "1", "-o", &data],
        b"",
    );
    ok(
        DATA,
        &["checkerboard", "-n", "1000", "--seed", "2", "-o", &refs],
        b"",
    );
    ok(
        NOISE,
        &["-n", "1000", "--shape", "2", "--seed", "3", "-o", &noise],
        b"",
    );
    let fm = path(&dir, "fm.st");
    let train = [
        "--data",
        &data,
        "--hidden",
        "128,128",
        "--steps",
        "1500",
        "--batch",
        "256",
        "--lr",
        "2e-3",
        "--decay",
        "cosine",
        "--threads",
        "1",
        "--seed",
        "4",
        "-q",
    ];
    ok(FIT, &[&train[..], &["-o", &fm]].concat(), b"");
    let x_fm = path(&dir, "xfm.npy");
    let sim = [
        &noise, "--field", &fm, "--solver", "euler", "--steps", "1", "-q",
    ];
    ok(SIM, &[&sim[..], &["-o", &x_fm]].concat(), b"");
    // One Euler step lands every sample near the data mean (about 1.3 here).
    let e_fm = energy(&x_fm, &refs);

    // Each objective on the same budget, checkpointed at step `every`: its one step must be
    // several times closer to the data, and a run resumed from the checkpoint without
    // --objective must end in the same bytes (the objective was kept). Returns the model, the
    // checkpoint and the flags of the run.
    let from_data = |objective: &str, every: &str| -> (String, String, Vec<String>) {
        let model = path(&dir, &format!("{objective}.st"));
        let ck = path(&dir, &format!("{objective}-{{step}}.st"));
        let flags: Vec<String> = train
            .iter()
            .map(|s| s.to_string())
            .chain(["--objective".into(), objective.into()])
            .collect();
        let keep = [
            "--checkpoint",
            &ck,
            "--checkpoint-every",
            every,
            "-o",
            &model,
        ];
        let args: Vec<&str> = flags.iter().map(String::as_str).chain(keep).collect();
        ok(FIT, &args, b"");
        let x = path(&dir, &format!("x-{objective}.npy"));
        ok(
            FEW,
            &[&noise, "--model", &model, "--steps", "1", "-q", "-o", &x],
            b"",
        );
        let e = energy(&x, &refs);
        assert!(
            e < 0.3 * e_fm,
            "one {objective} step {e} against one Euler step {e_fm}"
        );
        let ck = ck.replace("{step}", every);
        let again = path(&dir, &format!("again-{objective}.st"));
        let resume = [
            "--data",
            &data,
            "--resume",
            &ck,
            "--threads",
            "1",
            "-q",
            "-o",
            &again,
        ];
        ok(FIT, &resume, b"");
        assert_eq!(
            std::fs::read(&model).unwrap(),
            std::fs::read(&again).unwrap(),
            "{objective}"
        );
        (model, ck, flags)
    };
    let kind = |model: &str| flowpipe::io::model::load(model, &candle_core::Device::Cpu).unwrap();

    let (sc, ck_sc, shortcut) = from_data("shortcut", "750");
    assert_eq!(kind(&sc).kind(), "flowmap");
    // The curriculum depends on the step only, so the resumed run repeats it.
    let (ct, _, consistency) = from_data("consistency", "750");
    assert_eq!(kind(&ct).kind(), "consistency");
    let (mf, ck_mf, meanflow) = from_data("meanflow", "1400");
    let m = kind(&mf);
    assert_eq!(m.kind(), "flowmap");
    assert_eq!(m.config["train"]["objective"], "meanflow");

    // Refused: flags that contradict a checkpoint's objective, and the ones no few-step
    // objective takes.
    let with = |flags: &[String], more: &[&str]| -> Vec<String> {
        flags
            .iter()
            .cloned()
            .chain(more.iter().map(|s| s.to_string()))
            .collect()
    };
    let out = path(&dir, "refused.st");
    let resume = |ck: &str, objective: &str| -> Vec<String> {
        [
            "--data",
            &data,
            "--resume",
            ck,
            "--objective",
            objective,
            "-q",
            "-o",
            &out,
        ]
        .map(String::from)
        .to_vec()
    };
    let fails_with = |args: Vec<String>, code: i32, words: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&run(FIT, &args, b""), code, words);
    };
    fails_with(
        resume(&ck_sc, "flow-matching"),
        1,
        &["shortcut-750.st", "flowmap"],
    );
    fails_with(
        resume(&ck_mf, "shortcut"),
        2,
        &["--objective shortcut", "meanflow", "meanflow-1400.st"],
    );
    // A shortcut checkpoint (no train.objective) does not become a MeanFlow run.
    fails_with(
        resume(&ck_sc, "meanflow"),
        2,
        &["--objective meanflow", "shortcut", "shortcut-750.st"],
    );
    for flags in [&shortcut, &meanflow, &consistency] {
        let ve = with(flags, &["--path", "ve", "-o", &out]);
        fails_with(ve, 2, &["--path ve"]);
        let grid = with(flags, &["--sample-grid", &path(&dir, "g.png"), "-o", &out]);
        fails_with(grid, 2, &["sample-fewstep"]);
    }
    fails_with(
        with(&consistency, &["--source", &data, "-o", &out]),
        2,
        &["--source"],
    );
    assert!(!std::path::Path::new(&out).exists());
    // The models the refused runs named are untouched.
    for model in [&sc, &ct, &mf] {
        assert!(std::path::Path::new(model).is_file());
    }
}
