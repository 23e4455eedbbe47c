//! The README's configuration reference stays in step with the code: every key it
//! shows is one the config reader knows, and its values pass validation (only the
//! example file paths, which do not exist here, may fail).

fn reference_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Configuration reference").nth(1).expect("the README has a configuration reference");
    let block = section.split("```toml\n").nth(1).expect("a toml block in it");
    block.split("\n```").next().unwrap().to_string()
}

#[test]
fn every_key_in_the_configuration_reference_is_known() {
    let block = reference_block();
    if let Err(e) = toml::from_str::<portcullis::config::raw::RawConfig>(&block) {
        panic!("the README's configuration reference does not parse:\n{e}");
    }
    match portcullis::config::parse(&block) {
        Ok(_) => {}
        Err(e) => {
            let unexpected: Vec<_> = e
                .problems
                .iter()
                .filter(|p| !p.starts_with("tls:") && !p.starts_with("auth.users_file:") && !p.contains("ca_file"))
                .collect();
            assert!(unexpected.is_empty(), "the reference's values fail validation: {unexpected:#?}");
        }
    }
}
