# Included by the Makefile phpize's configure writes (config.m4): cargo builds the extension,
# and PHP's own `install-modules` copies modules/joinblock.so into the extension directory.
# The .so depends on the crate's files (and on the Makefile, which names the PHP), not on a
# phony target, so `make install` after `make` (PIE runs it under sudo when the directory is
# root's) does not run cargo again.

# CARGO_TARGET_DIR from the environment, else target/ in the source directory.
JOINBLOCK_TARGET_DIR = $(or $(CARGO_TARGET_DIR),$(srcdir)/target)
JOINBLOCK_SOURCES = $(srcdir)/Cargo.toml $(srcdir)/Cargo.lock $(srcdir)/build.rs $(shell find $(srcdir)/src -name '*.rs')

all: $(phplibdir)/joinblock.so
build-modules: $(phplibdir)/joinblock.so

# '+': cargo takes its job slots from make's jobserver (PIE runs make -jN).
$(phplibdir)/joinblock.so: $(JOINBLOCK_SOURCES) Makefile
	+cd '$(srcdir)' && PHP='$(PHP_EXECUTABLE)' PHP_CONFIG='$(JOINBLOCK_PHP_CONFIG)' '$(CARGO)' build --release --locked --target-dir '$(JOINBLOCK_TARGET_DIR)'
	$(mkinstalldirs) $(phplibdir)
	if test -f '$(JOINBLOCK_TARGET_DIR)/release/libjoinblock.dylib'; then \
		cp '$(JOINBLOCK_TARGET_DIR)/release/libjoinblock.dylib' $@; \
	else \
		cp '$(JOINBLOCK_TARGET_DIR)/release/libjoinblock.so' $@; \
	fi

# PHP's own clean deletes every *.so, *.a and *.o under this directory, which would leave a
# target/ in here half gone (the proc-macros and build-script objects of the dependencies):
# that target/ goes entirely. A CARGO_TARGET_DIR from the environment may be shared with other
# builds: only this crate's products go there.
clean: joinblock-clean
joinblock-clean:
	if test -n '$(CARGO_TARGET_DIR)'; then \
		cd '$(srcdir)' && '$(CARGO)' clean --release --package joinblock --target-dir '$(CARGO_TARGET_DIR)'; \
	else \
		rm -rf '$(srcdir)/target'; \
	fi
	rm -f $(phplibdir)/joinblock.so

.PHONY: joinblock-clean
