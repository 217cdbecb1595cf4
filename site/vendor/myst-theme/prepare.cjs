// Run before the theme's build (npm run build). Two changes to what npm installed, nothing downloaded:
// 1. As myst-theme's own patch of @jupyter-widgets/controls (patches/ in jupyter-book/myst-theme): Remix's CSS
//    bundler cannot follow these two @imports of widgets-base.css, and the theme does not need them.
// 2. KaTeX's stylesheet and fonts from the katex package into public/katex/, so that formulas are styled
//    offline (the upstream theme links them from a CDN; app/katex.ts links this copy instead).
const fs = require('fs');
const path = require('path');

const widgets = require.resolve('@jupyter-widgets/controls/css/widgets-base.css');
const text = fs.readFileSync(widgets, 'utf8');
const patched = text.replace(/^@import '\.\/(lumino|nouislider)\.css';$/gm, "/* @import './$1.css'; */");
if (patched !== text) fs.writeFileSync(widgets, patched);

const katex = path.join(path.dirname(require.resolve('katex/package.json')), 'dist');
const out = path.join(__dirname, 'public', 'katex');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(path.join(out, 'fonts'), { recursive: true });
fs.copyFileSync(path.join(katex, 'katex.min.css'), path.join(out, 'katex.min.css'));
for (const font of fs.readdirSync(path.join(katex, 'fonts'))) {
  fs.copyFileSync(path.join(katex, 'fonts', font), path.join(out, 'fonts', font));
}
