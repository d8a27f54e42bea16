<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/** php-stubs/joinblock.stub.php states exactly what the loaded extension exports. */
final class StubTest extends JoinBlockTestCase
{
    public function testStubMatchesTheLoadedExtension(): void
    {
        $script = self::fixture('signatures.php');
        $fromExtension = self::runPhpOk(self::phpCommand($script, 'ext'));
        // The stub is declared into a PHP without the extension, as PHPStan would read it.
        $fromStub = self::runPhpOk([PHP_BINARY, '-n', $script, 'stub', dirname(__DIR__, 2) . '/php-stubs/joinblock.stub.php']);
        $this->assertNotEmpty(json_decode($fromExtension, true)['functions']);
        $this->assertSame($fromExtension, $fromStub);
    }
}
