//! The shipped Omniglot model over real HTTP with PNG uploads: a 5-way
//! 1-shot session from drawings of alphabets never seen in training, labels of
//! any kind, PNGs of other sizes and colour types, the array form, and bad
//! images answered with 4xx while the session keeps answering the same.

use crate::common;

use std::io::{Cursor, Read};

use base64::Engine;
use common::{shipped_models, TestServer};
use image::{DynamicImage, GrayImage, Rgba, RgbaImage};
use serde_json::{json, Value};

/// Drawings `0..n` of character `c` of the evaluation zip, as PNG bytes.
fn drawings(zip: &mut zip::ZipArchive<std::fs::File>, names: &[String], c: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut b = Vec::new();
            zip.by_name(&names[c * 20 + i]).unwrap().read_to_end(&mut b).unwrap();
            b
        })
        .collect()
}

fn b64(bytes: &[u8]) -> Value {
    json!({"png_base64": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_upload_session_classifies_unseen_alphabets() {
    let Some(dir) = common::shared_dir("data/omniglot") else {
        return;
    };
    let mut zip = zip::ZipArchive::new(std::fs::File::open(dir.join("images_evaluation.zip")).unwrap()).unwrap();
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    // Five characters from five different evaluation alphabets (each has 20 drawings).
    let chars = [3usize, 140, 290, 430, 600];
    let labels = json!(["alpha", 2, "gamma", "δέλτα", 5]);
    let per: Vec<Vec<Vec<u8>>> = chars.iter().map(|&c| drawings(&mut zip, &names, c, 6)).collect();

    let s = TestServer::with_models(shipped_models()).await;
    let (st, info) = s.get("/v1/models/omniglot").await;
    assert_eq!(st, 200);
    assert_eq!(info["input"], json!({"kind": "image", "shape": [1, 28, 28]}));

    let support: Vec<Value> = per.iter().map(|d| b64(&d[0])).collect();
    let (st, created) = s
        .post(
            "/v1/models/omniglot/sessions",
            json!({"support": {"inputs": support, "labels": labels}}),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["classes"], labels);
    let id = created["session_id"].as_str().unwrap().to_string();

    let queries: Vec<Value> = per.iter().flat_map(|d| d[1..].iter().map(|b| b64(b))).collect();
    let (st, out) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": queries}))
        .await;
    assert_eq!(st, 200, "{out}");
    let preds = out["predictions"].as_array().unwrap();
    let correct = preds.iter().enumerate().filter(|(i, p)| **p == labels[i / 5]).count();
    assert!(
        correct >= 20,
        "only {correct}/25 query drawings classified right: {preds:?}"
    );

    // The same drawing as a 28×28 array of ink values predicts identically.
    let ink = metasgd::images::png_to_ink(&per[0][1], 1024).unwrap();
    let rows: Vec<Vec<f32>> = ink.chunks(28).map(|r| r.to_vec()).collect();
    let (_, arr) = s
        .post(
            &format!("/v1/sessions/{id}/predict"),
            json!({"inputs": [rows, [rows.clone()]]}),
        )
        .await;
    // (Equal up to float rounding: a different batch size can change matmul blocking.)
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5)
    };
    assert!(
        close(&arr["probabilities"][0], &out["probabilities"][0]),
        "{arr} vs {out}"
    );
    assert!(
        close(&arr["probabilities"][1], &out["probabilities"][0]),
        "[1][28][28] is accepted too"
    );
    assert_eq!(arr["predictions"][0], out["predictions"][0]);

    // Another size and colour type of the same drawing: RGBA at 210×210 with a transparent background.
    let gray = image::load_from_memory(&per[2][1]).unwrap().to_luma8();
    let big = image::imageops::resize(&gray, 210, 210, image::imageops::FilterType::Nearest);
    let rgba = RgbaImage::from_fn(210, 210, |x, y| {
        let ink = big.get_pixel(x, y).0[0] < 128;
        if ink {
            Rgba([20, 20, 90, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    let (st, one) = s
        .post(
            &format!("/v1/sessions/{id}/predict"),
            json!({"inputs": [b64(&png(&DynamicImage::ImageRgba8(rgba)))]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(one["predictions"][0], labels[2], "{one}");

    // Bad images: each a 4xx JSON error.
    let good = per[0][1].clone();
    let huge = png(&DynamicImage::ImageLuma8(GrayImage::from_pixel(
        2000,
        10,
        image::Luma([255]),
    )));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"png_base64": "not base64 at all!"}), "invalid_base64"),
        (b64(b"GIF89a, not a png"), "invalid_image"),
        (b64(&good[..good.len() / 2]), "invalid_image"),
        (b64(&good[..16]), "invalid_image"),
        (b64(b""), "invalid_image"),
        (b64(&huge), "invalid_image"),
        (json!({"png_base64": 5}), "invalid_input"),
        (json!({"png": "x"}), "invalid_input"),
        (json!(vec![vec![0.5; 28]; 27]), "wrong_dimensions"),
        (json!(vec![vec![1.5; 28]; 28]), "out_of_range"),
        (json!("a string"), "invalid_input"),
    ];
    for (input, code) in cases {
        let (st, err) = s
            .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": [input]}))
            .await;
        assert_eq!(st, 422, "{input}: {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }
    // The session is untouched.
    let (_, again) = s
        .post(&format!("/v1/sessions/{id}/predict"), json!({"inputs": queries}))
        .await;
    assert_eq!(again, out);
    s.stop().await;
}
