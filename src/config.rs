//! INI settings: their names, defaults, registration and how the running PHP reads them.

use ext_php_rs::{
    ffi::zend_ini_entry,
    flags::IniEntryPermission,
    zend::{ExecutorGlobals, IniEntryDef, IniEntryDefs},
};

/// Lock directory; empty means PHP's `sys_get_temp_dir()`.
pub const LOCK_DIR: &str = "joinblock.lock_dir";

static INI_ENTRIES: IniEntryDefs<2> = IniEntryDefs::new([
    IniEntryDef::new(c"joinblock.lock_dir", c"", IniEntryPermission::All),
    IniEntryDef::end(),
]);

/// Called from the module's startup hook.
pub fn register(module_number: i32) {
    IniEntryDef::register(INI_ENTRIES.as_slice(), module_number);
}

/// The current value of one INI setting (after `ini_set`), as raw bytes; `None` when it is
/// unset or empty.
pub fn ini_bytes(name: &str) -> Option<Vec<u8>> {
    let globals = ExecutorGlobals::get();
    // SAFETY: `EG(ini_directives)` is set up before any request runs and stays valid while
    // one does; its entries are `zend_ini_entry` pointers owned by the engine.
    let directives = unsafe { globals.ini_directives.as_ref() }?;
    let entry = unsafe { directives.get(name)?.ptr::<zend_ini_entry>()?.as_ref() }?;
    let value = unsafe { entry.value.as_ref() }?.as_bytes();
    (!value.is_empty()).then(|| value.to_vec())
}
