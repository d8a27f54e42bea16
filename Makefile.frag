# Included by the Makefile phpize's configure writes (config.m4): cargo builds the extension,
# and PHP's own `install-modules` copies modules/joinblock.so into the extension directory.
# The .so depends on the crate's files, not on a phony target, so `make install` after `make`
# (PIE runs it under sudo when the directory is root's) does not run cargo again.

# CARGO_TARGET_DIR from the environment, else target/ in the source directory.
JOINBLOCK_TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(srcdir)/target)
JOINBLOCK_SOURCES = $(srcdir)/Cargo.toml $(srcdir)/Cargo.lock $(srcdir)/build.rs $(shell find $(srcdir)/src -name '*.rs')

all: $(phplibdir)/joinblock.so
build-modules: $(phplibdir)/joinblock.so

$(phplibdir)/joinblock.so: $(JOINBLOCK_SOURCES)
	cd $(srcdir) && PHP='$(PHP_EXECUTABLE)' PHP_CONFIG='$(JOINBLOCK_PHP_CONFIG)' '$(CARGO)' build --release --locked --target-dir '$(JOINBLOCK_TARGET_DIR)'
	$(mkinstalldirs) $(phplibdir)
	cp '$(JOINBLOCK_TARGET_DIR)/release/libjoinblock.so' $@

# Removes this crate's build products only: CARGO_TARGET_DIR may be shared with other builds.
clean: joinblock-clean
joinblock-clean:
	-cd $(srcdir) && '$(CARGO)' clean --release --package joinblock --target-dir '$(JOINBLOCK_TARGET_DIR)'
	rm -f $(phplibdir)/joinblock.so

.PHONY: joinblock-clean
