//! Image preprocessing shared by training and serving: a PNG of any size and
//! colour type becomes a 28×28 "ink" image in [0, 1].
//!
//! The one conversion, [`ink_image`], is:
//! 1. composite over white and take the luminance `L` in [0, 1] (8/16-bit
//!    grey, grey+alpha, RGB or RGBA all go through `image`'s `to_luma_alpha32f`),
//!    so a pixel's ink is `a·(1 − L)`: white paper is 0, black ink is 1;
//! 2. resample to 28×28 with `image`'s triangle filter, which widens its
//!    support by the scale factor when shrinking (an antialiased, area-like
//!    average; 105 → 28 averages about 4×4 source pixels per output pixel);
//! 3. clamp to [0, 1].
//!
//! Omniglot's 105×105 one-bit PNGs go through exactly this function when the
//! loader reads the zips, and so does every PNG a client uploads.

use std::io::Cursor;

use image::{imageops, DynamicImage, ImageBuffer, ImageReader, Luma};

/// Side of the model's square input.
pub const SIDE: usize = 28;
/// Values in one input image.
pub const PIXELS: usize = SIDE * SIDE;

/// Why an uploaded image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("not a PNG image")]
    NotPng,
    #[error("the image is {width}x{height} pixels; the limit is {limit} pixels on a side")]
    TooLarge { width: u32, height: u32, limit: u32 },
    #[error("the image has zero width or height")]
    ZeroSized,
    #[error("the PNG could not be decoded: {0}")]
    Decode(String),
}

/// Decodes a PNG and converts it with [`ink_image`]. Images wider or taller
/// than `max_side` pixels are refused before their pixels are decoded.
pub fn png_to_ink(bytes: &[u8], max_side: u32) -> Result<Vec<f32>, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(ImageError::NotPng);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSized);
    }
    if width > max_side || height > max_side {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: max_side,
        });
    }
    reader = ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(ink_image(&img))
}

/// The conversion described in the module docs: any image to 28×28 ink values, row-major.
pub fn ink_image(img: &DynamicImage) -> Vec<f32> {
    let la = img.to_luma_alpha32f();
    let (w, h) = la.dimensions();
    let ink: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_fn(w, h, |x, y| {
        let p = la.get_pixel(x, y).0;
        let (l, a) = (p[0].clamp(0.0, 1.0), p[1].clamp(0.0, 1.0));
        Luma([a * (1.0 - l)])
    });
    let small = if (w, h) == (SIDE as u32, SIDE as u32) {
        ink
    } else {
        imageops::resize(&ink, SIDE as u32, SIDE as u32, imageops::FilterType::Triangle)
    };
    small.into_raw().into_iter().map(|v| v.clamp(0.0, 1.0)).collect()
}

/// Rotates a square row-major image by `quarter_turns` × 90° counter-clockwise.
/// On a square grid this is an exact permutation of the pixels.
pub fn rotate(img: &[f32], quarter_turns: usize) -> Vec<f32> {
    let n = (img.len() as f64).sqrt() as usize;
    debug_assert_eq!(n * n, img.len());
    let mut cur = img.to_vec();
    for _ in 0..quarter_turns % 4 {
        let mut next = vec![0f32; cur.len()];
        for r in 0..n {
            for c in 0..n {
                // Counter-clockwise: the pixel at (r, c) moves to (n-1-c, r).
                next[(n - 1 - c) * n + r] = cur[r * n + c];
            }
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgba, RgbaImage};

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn white_is_no_ink_and_black_is_full_ink() {
        let white = DynamicImage::ImageLuma8(GrayImage::from_pixel(105, 105, Luma([255])));
        let black = DynamicImage::ImageLuma8(GrayImage::from_pixel(50, 70, Luma([0])));
        assert!(png_to_ink(&png(&white), 4096).unwrap().iter().all(|&v| v == 0.0));
        assert!(png_to_ink(&png(&black), 4096)
            .unwrap()
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn transparent_pixels_are_paper_and_colour_goes_through_luminance() {
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(28, 28, Rgba([0, 0, 0, 0])));
        assert!(png_to_ink(&png(&clear), 4096).unwrap().iter().all(|&v| v == 0.0));
        let grey_rgb = DynamicImage::ImageRgba8(RgbaImage::from_pixel(28, 28, Rgba([128, 128, 128, 255])));
        let grey_l = DynamicImage::ImageLuma8(GrayImage::from_pixel(28, 28, Luma([128])));
        let (a, b) = (
            png_to_ink(&png(&grey_rgb), 4096).unwrap(),
            png_to_ink(&png(&grey_l), 4096).unwrap(),
        );
        assert!((a[0] - b[0]).abs() < 1e-3, "{} vs {}", a[0], b[0]);
    }

    #[test]
    fn bad_pngs_are_refused() {
        assert!(matches!(png_to_ink(b"", 4096), Err(ImageError::Empty)));
        assert!(matches!(png_to_ink(b"GIF89a....", 4096), Err(ImageError::NotPng)));
        let bytes = png(&DynamicImage::ImageLuma8(GrayImage::from_pixel(105, 105, Luma([9]))));
        assert!(matches!(
            png_to_ink(&bytes[..bytes.len() / 2], 4096),
            Err(ImageError::Decode(_))
        ));
        assert!(matches!(png_to_ink(&bytes[..20], 4096), Err(ImageError::Decode(_))));
        assert!(matches!(png_to_ink(&bytes, 100), Err(ImageError::TooLarge { .. })));
        // A header that claims zero width (with a valid CRC) is refused, not decoded.
        let mut zero = png(&DynamicImage::ImageLuma8(GrayImage::from_pixel(3, 3, Luma([0]))));
        zero[16..20].copy_from_slice(&0u32.to_be_bytes()); // IHDR width
        let crc = crc32fast::hash(&zero[12..29]);
        zero[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(
            matches!(
                png_to_ink(&zero, 4096),
                Err(ImageError::ZeroSized | ImageError::Decode(_))
            ),
            "{:?}",
            png_to_ink(&zero, 4096)
        );
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_one_turn_moves_a_corner() {
        let img: Vec<f32> = (0..PIXELS).map(|i| i as f32).collect();
        assert_eq!(rotate(&img, 4), img);
        let r = rotate(&img, 1);
        // Top-right (0, 27) goes to top-left (0, 0) under a counter-clockwise turn.
        assert_eq!(r[0], img[SIDE - 1]);
        assert_eq!(rotate(&rotate(&img, 1), 3), img);
    }
}
