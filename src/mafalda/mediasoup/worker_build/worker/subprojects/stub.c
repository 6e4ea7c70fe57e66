/*
 * Deliberately empty. The stub subprojects must still export the *_lib
 * static-library variables that worker/meson.build reads for its
 * non-default `libmediasoup-worker` target; meson needs at least one source
 * to declare a library, and this is it. The real code comes from the Debian
 * shared libraries found through pkg-config.
 */
typedef int mafalda_stub_translation_unit_is_not_empty;
