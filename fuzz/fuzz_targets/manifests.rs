//! A manifest file of any content: parsed as `serve --manifests` parses it, every object
//! converted, applied to the model and translated. Nothing may panic.
#![no_main]

use std::path::Path;

use dualstack_xds::model::{Family, ModelStore, ObjectKey};
use dualstack_xds::sources::convert::Objects;
use dualstack_xds::sources::manifests::{parse_file, select, Filter};
use dualstack_xds::translate::Translator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse_file(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let filter = Filter {
        // Everything, so every object reaches conversion.
        service_selector: "".parse().unwrap(),
        namespaces: vec![],
        config_map: ObjectKey::new("dualstack-xds", "dualstack-xds"),
    };
    let objects = select([&file], &filter);
    let mut store = ModelStore::default();
    store.apply_all(Objects::default().changes_to(&objects));
    let mut translator = Translator::new(Family::IPv4);
    translator
        .update(store.model(), None)
        .expect("a model from any input translates into a consistent snapshot");
    // And back to nothing.
    store.apply_all(objects.changes_to(&Objects::default()));
    translator.update(store.model(), None).expect("consistent");
});
