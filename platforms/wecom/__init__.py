"""WeCom (企业微信): the self-built app callback (`kind: wecom`, app.py) and the smart robot's
JSON callback with streamed replies (`kind: wecom_bot`, bot.py)."""

from platforms.wecom.app import WeComConfig, WeComPlatform
from platforms.wecom.bot import WeComBotConfig, WeComBotPlatform

__all__ = ["WeComBotConfig", "WeComBotPlatform", "WeComConfig", "WeComPlatform"]
