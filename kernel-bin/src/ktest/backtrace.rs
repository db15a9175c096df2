//! In-guest case of the symbol table `cargo xtask build` embeds, which crash reports
//! and backtraces resolve addresses with.

use super::TestResult;
use keel_arch_x86_64::{ArchInfo, backtrace};

fn symbol_table_names_functions(_: &ArchInfo) -> TestResult {
    let table = backtrace::symbol_table();
    check!(
        table.is_ok(),
        "no symbol table (built without cargo xtask?)"
    );
    let Ok(table) = table else { return Ok(()) };
    check!(table.len() > 100, "too few symbols", table.len());
    let address = symbol_table_names_functions as *const () as u64;
    let found = table.lookup(address + 1).map(|symbol| symbol.name);
    check!(
        found == Some(concat!(module_path!(), "::symbol_table_names_functions")),
        "lookup returned the wrong name",
        found
    );
    Ok(())
}
ktest!(symbol_table_names_functions);
