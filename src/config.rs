//! INI settings: their names, defaults, registration and how the running PHP reads them.

use std::ffi::{c_int, c_void, CStr};

use ext_php_rs::{
    ffi::{zend_ini_entry, zend_string},
    flags::IniEntryPermission,
    zend::{ExecutorGlobals, IniEntryDef, IniEntryDefs},
};

/// Lock directory; empty means PHP's `sys_get_temp_dir()`.
pub const LOCK_DIR: &str = "joinblock.lock_dir";

/// Action Network API root; per-call `base_url` overrides it.
pub const ACTION_NETWORK_URL: &str = "joinblock.action_network_url";

static INI_ENTRIES: IniEntryDefs<3> = IniEntryDefs::new([
    entry(c"joinblock.lock_dir", c""),
    entry(c"joinblock.action_network_url", c"https://actionnetwork.org/api/v2/"),
    IniEntryDef::end(),
]);

/// A setting any script may change. Values are checked where they are used, with errors that
/// name the setting.
const fn entry(name: &'static CStr, default: &'static CStr) -> IniEntryDef {
    let mut def = IniEntryDef::new(name, default, IniEntryPermission::All);
    def.on_modify = Some(accept_change);
    def
}

/// PHP only restores a setting at run time (`ini_restore`) when its handler accepts the old
/// value again; without a handler the change would stick for the rest of the request.
unsafe extern "C" fn accept_change(
    _entry: *mut zend_ini_entry,
    _new_value: *mut zend_string,
    _arg1: *mut c_void,
    _arg2: *mut c_void,
    _arg3: *mut c_void,
    _stage: c_int,
) -> c_int {
    0 // SUCCESS
}

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
