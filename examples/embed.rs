//! Prints the first values of each argument's embedding (a smoke check of the encoder).
fn main() -> anyhow::Result<()> {
    let texts: Vec<String> = std::env::args().skip(1).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let enc = metasgd::encoder::Encoder::load(
        &metasgd::encoder::minilm::spec(),
        std::path::Path::new("."),
        &Default::default(),
    )?;
    let v = enc.embed(&refs)?;
    for (t, row) in texts.iter().zip(v.chunks(384)) {
        println!("{t:?}: {:?}", &row[..6]);
    }
    Ok(())
}
