//! Training-time augmentation of 28×28 ink drawings (pre-training only):
//! a small random affine warp (rotation, shear, scale, shift; bilinear,
//! zero ink outside the frame), then a random change of stroke thickness
//! (a blend toward a 3×3 dilation or a plus-shaped erosion).
//!
//! The ranges follow what few-shot Omniglot work uses on a conv4: rotations
//! of a few degrees, shears under 0.3, scales of ±15% and shifts of two
//! pixels at 28×28. Serving never calls this.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::images::SIDE;

/// How strong the random warps are.
#[derive(Clone, Copy, Debug)]
pub struct Augment {
    /// Largest rotation, in degrees either way.
    pub rotate_deg: f32,
    /// Largest shear factor either way.
    pub shear: f32,
    /// Largest relative scale change either way (per axis).
    pub scale: f32,
    /// Largest shift in pixels either way (per axis).
    pub shift: f32,
    /// Chance of a thickness change (half thicker, half thinner).
    pub thickness_p: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            rotate_deg: 10.0,
            shear: 0.25,
            scale: 0.15,
            shift: 2.0,
            thickness_p: 0.5,
        }
    }
}

impl Augment {
    /// The default ranges times `s` (0 = no change, 1 = [`Augment::default`]);
    /// the thickness chance is scaled too, capped at 1.
    pub fn scaled(s: f32) -> Self {
        let d = Self::default();
        Self {
            rotate_deg: d.rotate_deg * s,
            shear: d.shear * s,
            scale: d.scale * s,
            shift: d.shift * s,
            thickness_p: (d.thickness_p * s as f64).clamp(0.0, 1.0),
        }
    }

    /// A warped copy of one `SIDE × SIDE` drawing.
    pub fn apply(&self, img: &[f32], rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut out = self.warp(img, rng);
        if rng.random_bool(self.thickness_p) {
            let t: f32 = rng.random_range(0.3..1.0);
            let other = if rng.random_bool(0.5) {
                dilate(&out)
            } else {
                erode(&out)
            };
            for (o, m) in out.iter_mut().zip(other) {
                *o += t * (m - *o);
            }
        }
        out
    }

    fn warp(&self, img: &[f32], rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut sym = |m: f32| if m > 0.0 { rng.random_range(-m..m) } else { 0.0 };
        let th = sym(self.rotate_deg).to_radians();
        let sh = sym(self.shear);
        let (sx, sy) = (1.0 + sym(self.scale), 1.0 + sym(self.scale));
        let (tx, ty) = (sym(self.shift), sym(self.shift));
        // Forward map A = R(th) · Shear(sh) · Scale(sx, sy) about the centre.
        let (c, s) = (th.cos(), th.sin());
        let a = [c * sx, (c * sh - s) * sy, s * sx, (s * sh + c) * sy];
        let det = a[0] * a[3] - a[1] * a[2];
        let inv = [a[3] / det, -a[1] / det, -a[2] / det, a[0] / det];
        let mid = (SIDE as f32 - 1.0) / 2.0;
        let mut out = vec![0f32; SIDE * SIDE];
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (u, v) = (x as f32 - mid - tx, y as f32 - mid - ty);
                let xs = inv[0] * u + inv[1] * v + mid;
                let ys = inv[2] * u + inv[3] * v + mid;
                out[y * SIDE + x] = bilinear(img, xs, ys);
            }
        }
        out
    }
}

fn at(img: &[f32], x: isize, y: isize) -> f32 {
    if x < 0 || y < 0 || x >= SIDE as isize || y >= SIDE as isize {
        0.0
    } else {
        img[y as usize * SIDE + x as usize]
    }
}

fn bilinear(img: &[f32], x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as isize, y0 as isize);
    let top = at(img, x0, y0) * (1.0 - fx) + at(img, x0 + 1, y0) * fx;
    let bottom = at(img, x0, y0 + 1) * (1.0 - fx) + at(img, x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// 3×3 maximum: strokes one pixel thicker.
fn dilate(img: &[f32]) -> Vec<f32> {
    neighbourhood(
        img,
        &[(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)],
        f32::max,
    )
}

/// Plus-shaped minimum: strokes thinner.
fn erode(img: &[f32]) -> Vec<f32> {
    neighbourhood(img, &[(0, -1), (-1, 0), (1, 0), (0, 1)], f32::min)
}

fn neighbourhood(img: &[f32], offsets: &[(isize, isize)], f: fn(f32, f32) -> f32) -> Vec<f32> {
    let mut out = img.to_vec();
    for y in 0..SIDE as isize {
        for x in 0..SIDE as isize {
            let o = &mut out[y as usize * SIDE + x as usize];
            for &(dx, dy) in offsets {
                *o = f(*o, at(img, x + dx, y + dy));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn square() -> Vec<f32> {
        let mut img = vec![0f32; SIDE * SIDE];
        for y in 10..18 {
            for x in 10..18 {
                img[y * SIDE + x] = 1.0;
            }
        }
        img
    }

    #[test]
    fn no_warp_is_the_identity() {
        let none = Augment {
            rotate_deg: 0.0,
            shear: 0.0,
            scale: 0.0,
            shift: 0.0,
            thickness_p: 0.0,
        };
        let img = square();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out = none.apply(&img, &mut rng);
        let err: f32 = out.iter().zip(&img).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn warps_keep_ink_in_range_and_roughly_its_amount() {
        let img = square();
        let ink: f32 = img.iter().sum();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let out = Augment::default().apply(&img, &mut rng);
            assert!(out.iter().all(|v| (0.0..=1.0 + 1e-5).contains(v)));
            let s: f32 = out.iter().sum();
            assert!(s > 0.3 * ink && s < 2.5 * ink, "{s} vs {ink}");
        }
    }

    #[test]
    fn scaled_halves_every_range_and_zero_is_the_identity() {
        let half = Augment::scaled(0.5);
        assert_eq!(half.shift, 1.0);
        assert_eq!(half.rotate_deg, 5.0);
        assert_eq!(half.thickness_p, 0.25);
        let img = square();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let out = Augment::scaled(0.0).apply(&img, &mut rng);
        let err: f32 = out.iter().zip(&img).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn dilation_thickens_and_erosion_thins() {
        let img = square();
        let ink: f32 = img.iter().sum();
        assert_eq!(dilate(&img).iter().sum::<f32>(), 100.0);
        assert!(erode(&img).iter().sum::<f32>() < ink);
    }
}
