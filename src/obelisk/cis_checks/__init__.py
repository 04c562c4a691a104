"""CIS Kubernetes Benchmark v1.12 and DISA Kubernetes STIG: checks as data, typed collectors, scans,
and the hardened Kubernetes configuration rendered from them.

Entry points (import the submodule; nothing heavy is imported here):

* `obelisk.cis_checks.scan.scan(root, benchmarks, waivers) -> core Report` (and `scan_root(root)`);
* `obelisk.cis_checks.render.render_tree(out_dir, role, kubernetes_version) -> RenderedTree`,
  `render_files(role, version)` (in memory), `required_modes(role)`, `write_encryption_config(path)`;
* `obelisk.cis_checks.catalogue.load_checks()` / `stig_facts()`: the catalogue and DISA facts.

See docs/cis_checks.md.
"""
