<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;
use PHPUnit\Framework\TestCase;

/**
 * docs/troubleshooting.md explains every message a user can meet: each part of a message that
 * the sources hold (MessageSources: the extension's src/, the polyfill, Site Health) appears in
 * one of the page's code spans, its placeholders standing for any text there. A new message
 * without an entry fails here. Reads files only, so it runs the same in the extension's and
 * the polyfill's run.
 */
final class TroubleshootingTest extends TestCase
{
    private const PAGE = 'docs/troubleshooting.md';

    /** @return array<string, array{string}> */
    public static function sources(): array
    {
        $cases = [];
        foreach (MessageSources::files(dirname(__DIR__, 2)) as $file) {
            $cases[$file] = [$file];
        }
        return $cases;
    }

    /**
     * @dataProvider sources
     */
    #[DataProvider('sources')]
    public function testEveryMessageOfTheFileHasAnEntry(string $file): void
    {
        $root = dirname(__DIR__, 2);
        $spans = self::codeSpans((string) file_get_contents("$root/" . self::PAGE));
        $missing = array_values(array_filter(
            MessageSources::messages($root)[$file],
            fn (string $message): bool => !self::explained($message, $spans)
        ));
        $this->assertSame([], $missing, 'messages of ' . $file . ' without an entry in ' . self::PAGE);
    }

    /**
     * The extraction finds the messages, not nothing: enough of them in each part, and the
     * ones every reader meets first; and no SQL statement is taken for one.
     */
    public function testTheSourcesYieldTheMessages(): void
    {
        $messages = MessageSources::messages(dirname(__DIR__, 2));
        $count = fn (string $prefix): int => array_sum(array_map(
            fn (string $file) => str_starts_with($file, $prefix) ? count($messages[$file]) : 0,
            array_keys($messages)
        ));
        $this->assertGreaterThanOrEqual(100, $count('src/'), 'the extension\'s messages');
        $this->assertGreaterThanOrEqual(100, $count('php/polyfill/'), 'the polyfill\'s messages');
        $this->assertGreaterThanOrEqual(8, $count('php/site-health.php'), 'Site Health\'s statuses and problems');
        $all = array_merge(...array_values($messages));
        foreach ([
            'timed out after … s waiting for …',
            'Action Network answered HTTP … to the …',
            'Member locks cannot be taken',
            'polled: SIGRTMAX is handled by other code, so no timer can end a waiting flock',
            '…: owned by uid …, not by this user (uid …); ignored',
            'joinblock_acquire_lock(): Argument #1 ($key) must not be empty after trimming white space',
            'is "…"; expected "file" or "mysql"',
            // Capitals of SQL in a message: not taken for SQL.
            'GET_LOCK answered NULL (the server killed the wait or ran out of memory)',
        ] as $expected) {
            $this->assertContains($expected, $all);
        }
        $this->assertSame([], array_values(array_filter($all, fn (string $m) => str_contains($m, 'SELECT '))), 'SQL is not a message');
    }

    /** The non-messages still occur where the list says: the list cannot hide a message by going stale. */
    public function testEveryListedNonMessageStillOccurs(): void
    {
        $root = dirname(__DIR__, 2);
        foreach (MessageSources::NOT_MESSAGES as $file => $texts) {
            $literals = MessageSources::literals($root, $file);
            foreach ($texts as $text) {
                $this->assertContains($text, $literals, "$file no longer has \"$text\": remove it from MessageSources::NOT_MESSAGES");
            }
        }
    }

    /** The matching rule itself: holes stand for any text, within one code span. */
    public function testAMessageMatchesOnlyWithinOneSpan(): void
    {
        $spans = self::codeSpans("Say `cannot open lock file /x: Permission denied (os error 13)` or\n`refusing lock path …: it is a\nsymbolic link, not a regular file` and `one` `two`.");
        $this->assertTrue(self::explained('cannot … lock file …: …', $spans));
        $this->assertTrue(self::explained('refusing lock path …: it is a …, not a regular file', $spans));
        $this->assertTrue(self::explained(' (os error …)', $spans));
        $this->assertFalse(self::explained('one two', $spans), 'two spans are two messages');
        $this->assertFalse(self::explained('cannot lock lock file …: flock() failed', $spans));
    }

    /**
     * Inline code spans of a Markdown page, white space collapsed (a span may wrap lines).
     *
     * @return list<string>
     */
    private static function codeSpans(string $markdown): array
    {
        preg_match_all('~`([^`]+)`~', (string) preg_replace('~^```.*?^```~ms', '', $markdown), $m);
        return array_map(fn (string $span) => (string) preg_replace('~\s+~', ' ', $span), $m[1]);
    }

    /** Whether `$message` (holes for its changing parts) fits in one of the spans. */
    private static function explained(string $message, array $spans): bool
    {
        $pattern = '~' . implode('.*', array_map(fn (string $part) => preg_quote($part, '~'), explode(MessageSources::HOLE, $message))) . '~us';
        foreach ($spans as $span) {
            if (preg_match($pattern, $span)) {
                return true;
            }
        }
        return false;
    }
}
