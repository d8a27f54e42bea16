<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

/**
 * The documentation's links hold: every relative link of README.md, BENCHMARKS.md and
 * docs/*.md names a file or directory of the repository, and every `#anchor` one of the
 * target page's headings, as GitHub computes their anchors. Reads files only, so it runs the
 * same in the extension's and the polyfill's run.
 */
final class DocsLinksTest extends TestCase
{
    /** @return list<string> the pages, relative to the repository */
    public static function pageNames(): array
    {
        $root = dirname(__DIR__, 2);
        return ['README.md', 'BENCHMARKS.md', ...array_map(fn (string $p) => substr($p, strlen($root) + 1), glob("$root/docs/*.md"))];
    }

    /** @return array<string, array{string}> */
    public static function pages(): array
    {
        $cases = [];
        foreach (self::pageNames() as $page) {
            $cases[$page] = [$page];
        }
        return $cases;
    }

    /**
     * @dataProvider pages
     */
    #[DataProvider('pages')]
    public function testEveryRelativeLinkAndAnchorResolves(string $page): void
    {
        $root = dirname(__DIR__, 2);
        $links = self::links((string) file_get_contents("$root/$page"));
        $dead = [];
        foreach ($links as $link) {
            if (preg_match('~^[a-z][a-z0-9+.-]*:~i', $link)) {
                continue; // https:, mailto:: not this repository's
            }
            [$path, $anchor] = array_pad(explode('#', $link, 2), 2, null);
            $target = $path === '' ? $page : self::resolve(dirname($page), rawurldecode($path));
            if ($target === null || !file_exists("$root/$target")) {
                $dead[] = "$link: no file $target";
            } elseif ($anchor !== null && !in_array($anchor, self::anchors((string) file_get_contents("$root/$target")), true)) {
                $dead[] = "$link: no heading with anchor #$anchor in $target";
            }
        }
        $this->assertSame([], $dead, "dead links in $page");
    }

    /** The checker finds what it is meant to: links in prose, and each kind of dead one. */
    public function testTheCheckerSeesLinksAndAnchors(): void
    {
        $page = "# A `code` title: with, punctuation!\n\n## Same\n\n## Same\n\n```md\n## not a heading [x](fenced.md)\n```\n"
            . "See [one](docs/a.md#b), ![pic](docs/p.png) and [two](#same-1), not `[code](x.md)`.\n";
        $this->assertSame(['a-code-title-with-punctuation', 'same', 'same-1'], self::anchors($page));
        $this->assertSame(['docs/a.md#b', 'docs/p.png', '#same-1'], self::links($page));
        $this->assertSame('docs/install.md', self::resolve('docs', './install.md'));
        $this->assertSame('README.md', self::resolve('docs', '../README.md'));
        $this->assertNull(self::resolve('.', '../outside.md'));
        $this->assertGreaterThanOrEqual(10, count(self::pageNames()), 'README, BENCHMARKS and the docs/ pages');
    }

    /**
     * Link targets of a Markdown page, outside code fences and code spans.
     *
     * @return list<string>
     */
    private static function links(string $markdown): array
    {
        $text = preg_replace(['~^```.*?^```~ms', '~`[^`\n]*`~'], '', $markdown);
        preg_match_all('~\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+"[^"]*")?\)~', (string) $text, $m);
        return $m[1];
    }

    /**
     * GitHub's anchors for a page's headings: lowercased, punctuation dropped but `-` and `_`,
     * spaces made `-`, a repeated one numbered `-1`, `-2`, ...
     *
     * @return list<string>
     */
    private static function anchors(string $markdown): array
    {
        $text = (string) preg_replace('~^```.*?^```~ms', '', $markdown);
        preg_match_all('~^#{1,6}\s+(.+?)\s*#*\s*$~m', $text, $m);
        $anchors = [];
        $seen = [];
        foreach ($m[1] as $heading) {
            $plain = preg_replace('~\[([^\]]*)\]\([^)]*\)~', '$1', $heading);
            $anchor = str_replace(' ', '-', (string) preg_replace('~[^\p{L}\p{M}\p{N}\p{Pc} -]~u', '', mb_strtolower((string) $plain)));
            $n = $seen[$anchor] ?? 0;
            $seen[$anchor] = $n + 1;
            $anchors[] = $n === 0 ? $anchor : "$anchor-$n";
        }
        return $anchors;
    }

    /** `$path` relative to the directory `$from`, both relative to the repository; null outside it. */
    private static function resolve(string $from, string $path): ?string
    {
        $parts = [];
        foreach (explode('/', ($from === '.' ? '' : "$from/") . $path) as $part) {
            if ($part === '..') {
                if ($parts === []) {
                    return null;
                }
                array_pop($parts);
            } elseif ($part !== '' && $part !== '.') {
                $parts[] = $part;
            }
        }
        return implode('/', $parts);
    }
}
