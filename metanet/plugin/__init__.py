"""The plugin machinery: hook specifications (:mod:`.hookspecs`), the pluggy manager that loads built-in and
external plugins and computes the registries from them (:mod:`.manager`), the registered objects that carry
their behaviour (:mod:`.registered`: operators, spaces, stages, strategies, datasets, exporters) and the
typed schema of a stage's settings (:mod:`.settings`).

May import: :mod:`metanet.errors` only (plugins are loaded by module path, never imported here).
"""
