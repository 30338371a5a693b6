import { defineConfig } from "vite";

// The build lands in dist/, which the natter binary embeds (crates/natter-server/build.rs). It is
// committed, so a fresh clone builds and runs without Node; .ci/run checks it is current.
export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 200 },
  server: { proxy: { "/api": { target: "http://127.0.0.1:8080", ws: true } } },
});
