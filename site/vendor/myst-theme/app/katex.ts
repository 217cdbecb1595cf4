// Course change: KaTeX's stylesheet from the theme's own public/katex/ (prepare.cjs copies it from the katex
// package), not from a CDN, so that the website renders its formulas offline.
import type { HtmlLinkDescriptor } from '@remix-run/react';

export const KatexCSS: HtmlLinkDescriptor = { rel: 'stylesheet', href: '/katex/katex.min.css' };
